//! A stand-in HTTP/1.1 file server for substitutes, for the tests and the bench: where the
//! answer must be something `guix publish` will not serve (altered narinfos, a slow server, a
//! nar compressed otherwise, a redirect, a server that stalls). It reads each request line,
//! skips the headers, and answers from a map of paths (404 for any other), keeping the
//! connection open for the next request.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a path answers.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// A file, streamed (a nar too large to hold).
    File(PathBuf),
    /// `302 Found` to this location.
    Redirect(String),
    /// A 200 answer announcing `announced` bytes that sends `sent`, then nothing more for a
    /// minute (a server that stalls), then closes the connection.
    Stall {
        announced: u64,
        sent: Vec<u8>,
    },
    /// No answer at all for a minute, then the connection closes.
    Silent,
}

/// Serves `routes` on a fresh port of 127.0.0.1 (returned) from a thread that lives as long
/// as the process, sending bodies at `rate` bytes per second at most (in 64 KiB
/// pieces) when given.
pub fn serve(routes: BTreeMap<String, Body>, rate: Option<usize>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let routes = routes.clone();
            std::thread::spawn(move || answer(conn, &routes, rate));
        }
    });
    Ok(port)
}

/// Answers the requests of one connection until it ends or breaks.
fn answer(conn: TcpStream, routes: &BTreeMap<String, Body>, rate: Option<usize>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_side) = conn.try_clone() else { return };
    let (mut reader, mut conn) = (BufReader::new(read_side), conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let sent = match routes.get(&path) {
            Some(Body::Bytes(bytes)) => send(&mut conn, bytes.len() as u64, &mut &bytes[..], rate),
            Some(Body::File(file)) => std::fs::File::open(file).and_then(|mut f| {
                let len = f.metadata()?.len();
                send(&mut conn, len, &mut f, rate)
            }),
            Some(Body::Redirect(to)) => {
                write!(conn, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
            }
            Some(Body::Stall { announced, sent }) => {
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\r\n")
                    .and_then(|()| conn.write_all(sent))
                    .and_then(|()| conn.flush());
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Some(Body::Silent) => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            None => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A 200 answer of `len` bytes read from `body`.
fn send(conn: &mut TcpStream, len: u64, body: &mut dyn std::io::Read, rate: Option<usize>) -> std::io::Result<()> {
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
    let mut piece = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut piece)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&piece[..n])?;
        if let Some(rate) = rate {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
}
