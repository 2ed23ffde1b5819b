//! A `graft ui` server for tests: the real binary on a free port, stopped
//! when dropped, and a raw HTTP/1.1 client that sends exactly the bytes a
//! test gives it (any Host, Origin or path, unnormalised).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct UiServer {
    child: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
}

impl UiServer {
    pub fn start(store: &Path) -> UiServer {
        UiServer::start_with(store, &[])
    }

    /// With more `graft ui` arguments (e.g. `--host`).
    pub fn start_with(store: &Path, args: &[&str]) -> UiServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["ui", "--port", "0", "--store"])
            .arg(store)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("graft ui starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("graft ui printed its address: {line:?}"))
            .to_string();
        UiServer { child, address }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// GET `path` with this server's own Host header.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[("Host", self.address.as_str())])
    }

    /// GET a JSON document that must be served (2xx).
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        serde_json::from_str(&response.body).unwrap()
    }

    /// Send a request line and exactly these headers.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let mut text = format!("{method} {path} HTTP/1.1\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(text.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw).to_string();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP status line: {raw:?}"));
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        Response {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `/api/...?key=value` with the value percent-encoded.
pub fn query(path: &str, pairs: &[(&str, &str)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            let value: String = value
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{key}={value}")
        })
        .collect();
    format!("{path}?{}", encoded.join("&"))
}
