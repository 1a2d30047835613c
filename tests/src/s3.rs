//! A real S3-compatible server for the object-storage scenarios: moto (PyPI, installed by
//! `scripts/setup.sh`), which answers conditional puts (`If-None-Match`, `If-Match`) as S3
//! does (atomically once `moto_server.py` serializes its puts), started on an ephemeral
//! loopback port and stopped when dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loupe_store::Location;

/// moto's server with its conditional puts made atomic (see the script).
const MOTO_SERVER: &str = include_str!("moto_server.py");

pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    child: Child,
}

impl S3Server {
    /// Starts moto with the given buckets created.
    pub fn start(buckets: &[&str]) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (scripts/setup.sh installs moto[server])");
        let server = S3Server { endpoint: format!("http://127.0.0.1:{port}"), child };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "moto did not start on port {port}: run scripts/setup.sh (it installs moto[server] from PyPI)");
            std::thread::sleep(Duration::from_millis(100));
        }
        for bucket in buckets {
            server.create_bucket(bucket);
        }
        server
    }

    fn create_bucket(&self, bucket: &str) {
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).unwrap();
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "creating bucket {bucket}: {response}");
    }

    /// Storage options for a store on this server (as a config's `[storage]` table).
    pub fn options(&self) -> BTreeMap<String, String> {
        [("aws_endpoint", self.endpoint.as_str()), ("aws_allow_http", "true"), ("aws_region", "us-east-1"), ("aws_access_key_id", "loupe-test"), ("aws_secret_access_key", "loupe-test")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The same settings as `AWS_*` variables, for a `loupe` process.
    pub fn env(&self) -> Vec<(String, String)> {
        self.options().into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)).collect()
    }

    /// The store at `s3://BUCKET/PREFIX` on this server.
    pub fn location(&self, url: &str) -> Location {
        Location::parse(url, &self.options()).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
