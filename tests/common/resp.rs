//! A raw RESP connection for the protocol tests (tests/resp.rs, tests/resp_multihost.rs): one
//! exchange primitive, [`Conn::call`] (send a command, read its whole reply), and assertions on
//! exact bytes built on it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::TestServer;
use super::store::SETTLE_TIMEOUT_MS;

/// How long a reply may take before the test fails (a functional bound, not a timing claim).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A raw RESP connection.
pub struct Conn {
    pub s: TcpStream,
}

/// A multibulk command.
pub fn mb(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
    }
    out
}

impl Conn {
    /// Connects to a test server's client port.
    pub fn open(server: &TestServer) -> Conn {
        Conn::connect(&server.addr.to_string())
    }

    /// Connects to `ip:port`.
    pub fn connect(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// Sends `args` as a multibulk and reads the whole reply (the one exchange primitive).
    pub fn call(&mut self, args: &[&str]) -> String {
        self.send(&mb(args));
        String::from_utf8_lossy(&self.read_reply()).into_owned()
    }

    /// As `call`, retrying while the store answers `-TRYAGAIN` (its map is changing), as Redis
    /// client libraries do; bounded by the settle timeout.
    pub fn call_retry(&mut self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
        loop {
            let r = self.call(args);
            if !r.starts_with("-TRYAGAIN") || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a command and asserts the reply is exactly `want`.
    pub fn cmd(&mut self, args: &[&str], want: &str) {
        let got = self.call(args);
        assert_eq!(got, want, "reply to {args:?}");
    }

    /// Sends raw bytes and asserts the next `want.len()` bytes are exactly `want`.
    pub fn check(&mut self, bytes: &[u8], want: &[u8]) {
        self.send(bytes);
        let got = self.read_n(want.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply to {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    /// Sends a command and returns its whole reply's bytes.
    pub fn read_reply_of(&mut self, args: &[&str]) -> Vec<u8> {
        self.send(&mb(args));
        self.read_reply()
    }

    /// Reads exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.s
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        buf
    }

    /// Reads one whole reply (for replies whose length the test does not know).
    pub fn read_reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_value(&mut out);
        out
    }

    fn read_line(&mut self, out: &mut Vec<u8>) -> Vec<u8> {
        let start = out.len();
        loop {
            let b = self.read_n(1)[0];
            out.push(b);
            if out.len() >= start + 2 && out[out.len() - 2..] == *b"\r\n" {
                return out[start..out.len() - 2].to_vec();
            }
        }
    }

    fn read_value(&mut self, out: &mut Vec<u8>) {
        let line = self.read_line(out);
        let n: i64 = std::str::from_utf8(&line[1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match line[0] {
            b'$' | b'=' if n >= 0 => out.extend(self.read_n(n as usize + 2)),
            b'*' | b'~' => (0..n.max(0)).for_each(|_| self.read_value(out)),
            b'%' => (0..2 * n).for_each(|_| self.read_value(out)),
            _ => {}
        }
    }

    /// Asserts the server closed the connection (after any bytes it still sends).
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to close the connection: {e}"),
            }
            assert!(Instant::now() < deadline, "connection not closed");
        }
    }
}
