{{- define "cachalot.labels" -}}
app.kubernetes.io/part-of: cachalot
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
The cachalot image. No public image exists: image.repository is required.
*/}}
{{- define "cachalot.image" -}}
{{ required "image.repository is required: build the image with scripts/image.sh and push or load it" .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cachalot.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

{{/*
The mounter's socket inside both containers (mounter --socket, node plugin
--mounter-socket); the host dir mounted at its directory is
.Values.mounter.socketHostPath.
*/}}
{{- define "cachalot.mounterSocketDir" -}}
/run/cachalot
{{- end -}}

{{- define "cachalot.mounterSocket" -}}
{{ include "cachalot.mounterSocketDir" . }}/mounter.sock
{{- end -}}

{{/*
Pull secrets of one component: its own list when it sets one (even an empty
list, which means "none"), otherwise the global list. Never merged.
Call with (dict "component" .Values.node "global" .Values.imagePullSecrets).
*/}}
{{- define "cachalot.imagePullSecrets" -}}
{{- $secrets := .global -}}
{{- if kindIs "slice" .component.imagePullSecrets -}}
{{- $secrets = .component.imagePullSecrets -}}
{{- end -}}
{{- with $secrets -}}
imagePullSecrets:
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/*
Pod Security Admission labels of the release namespace: the node plugin and
the mounter are privileged.
*/}}
{{- define "cachalot.podSecurityLabels" -}}
pod-security.kubernetes.io/enforce: privileged
pod-security.kubernetes.io/audit: privileged
pod-security.kubernetes.io/warn: privileged
{{- end -}}

{{/*
Namespaces where the provisioner may read Secrets (JSON list):
provisioner.secretNamespaces, or the release namespace.
*/}}
{{- define "cachalot.secretNamespaces" -}}
{{- toJson (.Values.provisioner.secretNamespaces | default (list .Release.Namespace) | uniq) -}}
{{- end -}}

{{- /*
s3CaBundle: the ConfigMap with the CAs of https S3 endpoints, mounted into the
containers that reach S3 (the controller, the mounter) and named to them by
SSL_CERT_FILE. Each snippet renders nothing without s3CaBundle.configMap.
*/ -}}
{{- define "cachalot.caBundleDir" -}}/etc/cachalot/s3-ca{{- end -}}

{{- define "cachalot.caBundleEnv" -}}
{{- with .Values.s3CaBundle.configMap }}
- name: SSL_CERT_FILE
  value: {{ include "cachalot.caBundleDir" $ }}/{{ $.Values.s3CaBundle.key }}
{{- end }}
{{- end -}}

{{- define "cachalot.caBundleMount" -}}
{{- with .Values.s3CaBundle.configMap }}
- name: s3-ca-bundle
  mountPath: {{ include "cachalot.caBundleDir" $ }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cachalot.caBundleVolume" -}}
{{- with .Values.s3CaBundle.configMap }}
- name: s3-ca-bundle
  configMap:
    name: {{ . }}
    items:
      - key: {{ $.Values.s3CaBundle.key }}
        path: {{ $.Values.s3CaBundle.key }}
{{- end }}
{{- end -}}
