//! `unix-peer <socket> <line>`: connect to a Unix socket, send one line, print the first line
//! of the answer. The isolation tests run it as another user (`setpriv --reuid 65534`) to show
//! that the node's sockets hang up on every uid but their own: it exits 0 with an answer, 3 when
//! the server hung up without one, 2 when it could not connect at all.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, line] = args.as_slice() else {
        eprintln!("usage: unix-peer <socket> <line>");
        return ExitCode::from(64);
    };
    let mut conn = match UnixStream::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect {socket}: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    // The server may hang up before reading: a failed write is an answer too.
    if let Err(e) = conn.write_all(format!("{line}\n").as_bytes()) {
        eprintln!("write: {e}");
        return ExitCode::from(3);
    }
    let mut answer = String::new();
    match BufReader::new(conn).read_line(&mut answer) {
        Ok(n) if n > 0 => {
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("the server hung up without an answer");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("read: {e}");
            ExitCode::from(3)
        }
    }
}
