"""A minimal STS endpoint for the web-identity (IRSA) tests: HTTPS on
127.0.0.1 (object_store refuses plain HTTP for STS), answering
AssumeRoleWithWebIdentity with the keys of a SeaweedFS identity, so the S3
requests signed with them are checked by a real S3 server.

moto serves AssumeRoleWithWebIdentity too, but picks the service from the
request body, and object_store sends the parameters in the query string:
moto answers such a request as S3.

The session token in the answer is empty: SeaweedFS takes a non-empty
X-Amz-Security-Token for one of its own STS sessions and refuses the keys.

Usage: sts.py CERT KEY PORT TOKEN_FILE ROLE_ARN KEY_ID SECRET LIFETIME_S CALLS_LOG
Every call is appended to CALLS_LOG (one line: the role and session name);
a wrong token or role is refused with 403 and logged as such.
"""
import datetime
import http.server
import ssl
import sys
import urllib.parse

CERT, KEY, PORT, TOKEN_FILE, ROLE_ARN, KEY_ID, SECRET, LIFETIME, CALLS = sys.argv[1:10]


class Sts(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        query.update(urllib.parse.parse_qs(body))
        get = lambda k: (query.get(k) or [""])[0]
        with open(TOKEN_FILE) as f:
            token = f.read().strip()
        ok = (get("Action") == "AssumeRoleWithWebIdentity" and get("RoleArn") == ROLE_ARN
              and get("WebIdentityToken").strip() == token)
        with open(CALLS, "a") as log:
            log.write(f"{'ok' if ok else 'refused'} {get('RoleArn')} {get('RoleSessionName')}\n")
        if not ok:
            # As STS answers: a sized body (without one the TLS stream's end
            # reads as a cut body, which a client retries as a transport error).
            body = b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"
            self.send_response(403)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=int(LIFETIME))
        xml = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials>
<AccessKeyId>{KEY_ID}</AccessKeyId><SecretAccessKey>{SECRET}</SecretAccessKey>
<SessionToken></SessionToken>
<Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>
</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"""
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml.encode())

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Sts)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
