//! A raw protocol connection for tests that speak frames directly, with no client library in
//! between (bad input, pipelining, requests that must reach one particular host).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use stategrid_proto::frame;
use stategrid_proto::{PROTOCOL_VERSION, Request, Response, codec};

use super::TestServer;

/// A raw protocol connection: frames in, frames out, no client library in between.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u64>,
    len: usize,
}

impl Raw {
    pub fn connect(server: &TestServer) -> Raw {
        Raw::connect_to(server.addr)
    }

    pub fn connect_to(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// A raw connection over a stream the caller connected (from a chosen source address).
    pub fn from_stream(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            buf: vec![0u64; 1 << 17],
            len: 0,
        }
    }

    pub fn hello(server: &TestServer) -> Raw {
        Raw::hello_to(server.addr)
    }

    pub fn hello_to(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect_to(addr);
        r.send(
            1,
            &Request::Hello {
                version: PROTOCOL_VERSION,
                client: "robustness".into(),
            },
            b"",
        );
        let (id, resp) = r.recv();
        assert_eq!(id, 1);
        assert!(matches!(resp, Response::HelloOk { .. }), "{resp:?}");
        r
    }

    pub fn send(&mut self, id: u32, req: &Request, value: &[u8]) {
        let mut out = Vec::new();
        codec::encode_request(&mut out, id, req, value);
        self.s.write_all(&out).unwrap();
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage viewed as bytes within its length.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, self.len) }
    }

    /// Reads one whole frame; None on EOF.
    pub fn try_recv_frame(&mut self) -> Option<(u32, Vec<u8>, Vec<u8>)> {
        loop {
            if let Some(p) =
                frame::parse(self.bytes(), usize::MAX).expect("server frames are well formed")
            {
                let out = (p.header.request_id, p.archive.to_vec(), p.value.to_vec());
                let n = p.frame_bytes;
                let rest = self.bytes()[n..].to_vec();
                self.len = 0;
                self.fill(&rest);
                return Some(out);
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.fill(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn fill(&mut self, b: &[u8]) {
        // SAFETY: writing within the u64 storage.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut u8, self.buf.len() * 8)
        };
        dst[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    pub fn recv(&mut self) -> (u32, Response) {
        let (id, archive, _) = self
            .try_recv_frame()
            .expect("connection closed before an answer");
        (id, decode(&archive))
    }

    pub fn expect_eof(&mut self) {
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tmp = [0u8; 4096];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to close the connection, got {e}"),
            }
        }
    }
}

pub fn decode(archive: &[u8]) -> Response {
    let mut aligned = vec![0u64; archive.len().div_ceil(8)];
    // SAFETY: copying bytes into u64 storage of sufficient size.
    unsafe {
        std::ptr::copy_nonoverlapping(
            archive.as_ptr(),
            aligned.as_mut_ptr() as *mut u8,
            archive.len(),
        )
    };
    // SAFETY: viewing initialised storage as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(aligned.as_ptr() as *const u8, archive.len()) };
    let a = codec::decode_response(bytes).expect("valid response archive");
    rkyv::deserialize::<Response, rkyv::rancor::Error>(a).unwrap()
}
