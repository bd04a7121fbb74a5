//! A TCP proxy in front of an S3 server that holds back the body of every
//! big ranged GET after its first bytes, until the test releases or cuts
//! it: what a reader gets while most of a GET's body is still on the wire.
//!
//! Started with `start_holding_uploads`, it holds big uploads (PUTs, such
//! as multipart parts) instead, before their first byte reaches the server.
//!
//! HTTP/1.1 without pipelining (what the S3 clients speak): a client sends
//! its next request on a connection only after the whole previous answer,
//! so the answer that follows a big GET on a connection is that GET's.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// GETs of at least this many bytes are held.
pub const HOLD_RANGES_FROM: u64 = 4 << 20;
/// Bytes of a held GET's body let through before it is held.
pub const LET_THROUGH: usize = 3 << 20;
/// A hold ends by itself after this long (before the client's 30 s request
/// timeout): a test that forgets to release still finishes.
const HOLD_AT_MOST: Duration = Duration::from_secs(25);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gate {
    Hold,
    Release,
    Cut,
}

struct Shared {
    gate: Mutex<Gate>,
    changed: Condvar,
    /// Bodies being held right now.
    held: AtomicUsize,
    stop: AtomicBool,
    /// Hold big PUTs instead of big GETs.
    uploads: bool,
}

pub struct HoldingProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl HoldingProxy {
    /// A proxy on 127.0.0.1 to the server at `upstream_port`, holding.
    pub fn start(upstream_port: u16) -> HoldingProxy {
        HoldingProxy::new(upstream_port, false)
    }

    /// A proxy that holds uploads of at least [`HOLD_RANGES_FROM`] bytes.
    pub fn start_holding_uploads(upstream_port: u16) -> HoldingProxy {
        HoldingProxy::new(upstream_port, true)
    }

    fn new(upstream_port: u16, uploads: bool) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate::Hold),
            changed: Condvar::new(),
            held: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            uploads,
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                connect(client, server, Arc::clone(&s));
            }
        });
        HoldingProxy { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bodies held right now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }

    /// Wait until at least `n` bodies are held.
    pub fn wait_held(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.held() < n {
            assert!(
                Instant::now() < deadline,
                "{} GET bodies held after {within:?}, expected {n}",
                self.held()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Let every held body (and every later one) through.
    pub fn release(&self) {
        self.set(Gate::Release);
    }

    /// Close the connections of the bodies held now (the client sees each
    /// end part-way), then let everything through.
    pub fn cut(&self) {
        self.set(Gate::Cut);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.held() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.set(Gate::Release);
    }

    fn set(&self, gate: Gate) {
        *self.shared.gate.lock().unwrap() = gate;
        self.shared.changed.notify_all();
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.release();
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Pump both directions of one connection.
fn connect(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let big = Arc::new(AtomicBool::new(false));
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (flag, to_server) = (Arc::clone(&big), Arc::clone(&shared));
    std::thread::spawn(move || requests(client, server, &flag, &to_server));
    std::thread::spawn(move || answers(server2, client2, &big, &shared));
}

/// Client to server: note when a request is a big ranged GET (before
/// forwarding it, so the flag is set before its answer can come).
fn requests(mut from: TcpStream, mut to: TcpStream, big: &AtomicBool, shared: &Shared) {
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left = 0usize;
    let mut framed = true;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut hold = false;
        if framed {
            pending.extend_from_slice(&buf[..n]);
            loop {
                if body_left > 0 {
                    let skip = body_left.min(pending.len());
                    pending.drain(..skip);
                    body_left -= skip;
                    if body_left > 0 {
                        break;
                    }
                }
                let Some(end) = find(&pending, b"\r\n\r\n") else {
                    break;
                };
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                pending.drain(..end + 4);
                if head.contains("transfer-encoding: chunked") {
                    framed = false; // can't follow this connection's requests
                    break;
                }
                body_left = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if shared.uploads {
                    hold |= head.starts_with("put ") && body_left as u64 >= HOLD_RANGES_FROM;
                } else if head.starts_with("get ") && range_len(&head) >= HOLD_RANGES_FROM {
                    big.store(true, Ordering::Release);
                }
            }
        }
        if hold && wait_gate(shared) == Gate::Cut {
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client: a big GET's answer goes through up to its head and
/// [`LET_THROUGH`] bytes of body, then waits for the gate (an error answer
/// or a short body goes through).
fn answers(mut from: TcpStream, mut to: TcpStream, big: &AtomicBool, shared: &Shared) {
    let mut buf = vec![0u8; 64 << 10];
    // The head so far of a big GET's answer.
    let mut head: Option<Vec<u8>> = None;
    // Body bytes of a big GET's answer to let through before the hold.
    let mut through: Option<usize> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if head.is_none() && through.is_none() && big.swap(false, Ordering::AcqRel) {
            head = Some(Vec::new());
        }
        if let Some(h) = &mut head {
            let before = h.len();
            h.extend_from_slice(data);
            let Some(end) = find(h, b"\r\n\r\n") else {
                if to.write_all(data).is_err() {
                    return;
                }
                continue;
            };
            let text = String::from_utf8_lossy(&h[..end]).to_ascii_lowercase();
            let ok = text.starts_with("http/1.1 20");
            let length: usize = header(&text, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            through = (ok && length > LET_THROUGH).then_some(LET_THROUGH);
            head = None;
            let (head_part, body) = data.split_at(end + 4 - before);
            if to.write_all(head_part).is_err() {
                return;
            }
            data = body;
        }
        if let Some(left) = through {
            let now = left.min(data.len());
            if to.write_all(&data[..now]).is_err() {
                return;
            }
            data = &data[now..];
            through = Some(left - now).filter(|left| *left > 0);
            if through.is_none() && wait_gate(shared) == Gate::Cut {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(data).is_err() {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Hold until the gate opens (or is cut); counts as held meanwhile.
fn wait_gate(shared: &Shared) -> Gate {
    shared.held.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + HOLD_AT_MOST;
    let mut gate = shared.gate.lock().unwrap();
    while *gate == Gate::Hold && Instant::now() < deadline {
        gate = shared
            .changed
            .wait_timeout(gate, Duration::from_millis(100))
            .unwrap()
            .0;
    }
    let passed = *gate;
    drop(gate);
    shared.held.fetch_sub(1, Ordering::AcqRel);
    passed
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a lower-cased head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

/// Bytes a `range: bytes=a-b` header asks for (0 without one).
fn range_len(head: &str) -> u64 {
    let Some(spec) = header(head, "range").and_then(|v| v.strip_prefix("bytes=")) else {
        return 0;
    };
    match spec.split_once('-') {
        Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if b >= a => b - a + 1,
            _ => 0,
        },
        None => 0,
    }
}
