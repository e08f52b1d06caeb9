//! [`Certificates`]: a private certificate authority made for one test (with the `openssl`
//! command), the certificates it signs — one for servers on loopback, one for a client — and
//! the `redis-server` arguments that serve TLS with them; [`TlsSentinel`]: a sentinel that
//! serves TLS and reaches its primary over TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::redis_process::{RedisProcess, TempDir};
use super::server::free_port;

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

/// A sentinel (quorum 1) that monitors a primary at its TLS port and serves TLS itself on a
/// port of its own; its plain port is for the harness. Killed on drop.
pub struct TlsSentinel {
    /// Killed on drop.
    _process: RedisProcess,
    port: u16,
    tls_port: u16,
    /// Dropped after the process.
    _dir: TempDir,
}

impl TlsSentinel {
    /// Start one watching `master_name` at `127.0.0.1:<primary_tls_port>`, which must serve
    /// TLS with `certs`' server certificate.
    pub fn start(certs: &Certificates, master_name: &str, primary_tls_port: u16) -> Self {
        let dir = TempDir::new("tls-sentinel");
        let conf = dir.path().join("sentinel.conf");
        let path = |file: &str| certs.path(file).display().to_string();
        let mut last_error = String::new();
        for _ in 0..5 {
            let (port, tls_port) = (free_port(), free_port());
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\n\
                 tls-port {tls_port}\ntls-cert-file \"{}\"\ntls-key-file \"{}\"\ntls-ca-cert-file \"{}\"\n\
                 tls-auth-clients no\ntls-replication yes\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {master_name} 127.0.0.1 {primary_tls_port} 1\n",
                dir.path().display(),
                path("server.pem"),
                path("server.key"),
                path("ca.pem"),
            );
            std::fs::write(&conf, text).unwrap_or_else(|err| panic!("writing {}: {err}", conf.display()));
            let args = vec![conf.clone().into_os_string(), "--sentinel".into()];
            let mut process = RedisProcess::new(port, dir.path().to_owned(), args, "Sentinel ID is");
            match process.spawn() {
                Ok(()) => return Self { _process: process, port, tls_port, _dir: dir },
                Err(err) => last_error = err,
            }
        }
        panic!("could not start a TLS sentinel after 5 attempts: {last_error}");
    }

    /// `rediss://127.0.0.1:<TLS port>`.
    pub fn rediss_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// `redis://127.0.0.1:<plain port>`, for the harness (`SENTINEL FAILOVER`, inspection).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}
