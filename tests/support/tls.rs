//! [`Certificates`]: a private certificate authority made for one test (with the `openssl`
//! command), the certificates it signs — one for servers on loopback, one for a client — and
//! the `redis-server` arguments that serve TLS with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::redis_process::TempDir;

/// A certificate authority and what it signed, as PEM files in a temp dir of their own.
pub struct Certificates {
    dir: TempDir,
}

impl Certificates {
    /// A new authority, a server certificate for `127.0.0.1` and `localhost`, and a client
    /// certificate, all signed by it. Panics if `openssl` fails (it is a test prerequisite,
    /// installed by `.ci/run`).
    pub fn generate() -> Self {
        let dir = TempDir::new("tls");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|err| panic!("running openssl (is it installed?): {err}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=dlock test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        for (name, extensions) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.path().join(format!("{name}.ext")), extensions)
                .unwrap_or_else(|err| panic!("writing {name}.ext: {err}"));
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN=dlock test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Self { dir }
    }

    /// The path of one of the PEM files: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The contents of one of the PEM files.
    pub fn pem(&self, file: &str) -> Vec<u8> {
        read(&self.path(file))
    }

    /// `redis-server` arguments that serve TLS on `tls_port` with the server certificate (the
    /// plain port stays open, for the harness), verifying clients' certificates when
    /// `verify_clients`. Replication and the cluster bus stay plain.
    pub fn server_args(&self, tls_port: u16, verify_clients: bool) -> Vec<String> {
        let path = |file: &str| self.path(file).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            if verify_clients { "yes" } else { "no" }.into(),
        ]
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}
