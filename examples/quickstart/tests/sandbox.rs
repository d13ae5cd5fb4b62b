//! Each of these tests runs in its own container under `cargo sandbox-test`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

#[test]
fn fixed_port_server() {
    // Every test has its own loopback, so a fixed port never collides with
    // another test or with the host.
    let listener = TcpListener::bind("127.0.0.1:8080").expect("bind 127.0.0.1:8080");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"hello").unwrap();
    });
    let mut reply = String::new();
    TcpStream::connect("127.0.0.1:8080")
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    server.join().unwrap();
    assert_eq!(reply, "hello");
}

#[test]
fn scratch_files_are_discarded() {
    // Writes land in the container's copy-on-write layer and vanish with it.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scratch.txt");
    std::fs::write(&path, "temporary").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "temporary");
}
