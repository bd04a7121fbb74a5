//! An STS endpoint for web-identity tests (`sts.py` next to this file):
//! HTTPS with a certificate from a throwaway CA made by `openssl`, trusted
//! by the mount through `SSL_CERT_FILE`. Stopped by Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::tls::make_certificates;
use super::{die_with_parent, free_port_block, wait_for_port};

pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/cachalot-test";

pub struct Sts {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sts {
    /// An STS that accepts `token` for [`ROLE_ARN`] and answers with
    /// `key_id`/`secret`, valid for `lifetime_s` seconds.
    pub fn start(token: &str, key_id: &str, secret: &str, lifetime_s: u64) -> Sts {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certificates(dir.path());
        let expected = dir.path().join("expected-token");
        std::fs::write(&expected, token).unwrap();
        let port = free_port_block(1);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support_s3/sts.py");
        let log = dir.path().join("sts.log");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(dir.path().join("server.pem"))
            .arg(dir.path().join("server.key"))
            .arg(port.to_string())
            .arg(&expected)
            .arg(ROLE_ARN)
            .arg(key_id)
            .arg(secret)
            .arg(lifetime_s.to_string())
            .arg(dir.path().join("calls.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start python3 sts.py");
        wait_for_port(port, &mut child, "sts.py", &log);
        Sts { child, dir, port }
    }

    /// From now on accept `token` (only).
    pub fn accept(&self, token: &str) {
        std::fs::write(self.dir.path().join("expected-token"), token).unwrap();
    }

    /// `AWS_ENDPOINT_URL_STS`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed its certificate (`SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The calls it answered, `ok ROLE SESSION` or `refused ROLE SESSION`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Sts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
