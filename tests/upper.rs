//! Upper-case and greeting roles over real sockets, and the rot13 example role.

mod common;

#[path = "../examples/rot13.rs"]
mod rot13;

use std::io::Write;
use std::net::UdpSocket;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::roles::hello::Hello;
use switchboard::roles::upper::Upper;

fn udp_round_trip(server: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.send_to(data, server).unwrap();
    let mut buf = vec![0; 70_000];
    let n = sock.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn upper_over_tcp_handles_multibyte_and_invalid_utf8() {
    let server = start_role(Upper, ServerConfig::default());
    let mut s = client(server.tcp);
    // A multibyte character split across two writes, CRLF kept, invalid bytes replaced,
    // and a last line without a newline.
    s.write_all("straße çà \u{3c0}".as_bytes()).unwrap();
    s.write_all(&[0xCF]).unwrap(); // first half of 'π'
    s.flush().unwrap();
    s.write_all(&[0x80, b'\r', b'\n']).unwrap();
    s.write_all(b"bad \xff\xfe bytes\nlast").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_to_end(&mut s);
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "STRASSE ÇÀ ΠΠ\r\nBAD \u{FFFD}\u{FFFD} BYTES\nLAST"
    );
    server.stop();
}

#[test]
fn upper_over_udp_answers_each_datagram() {
    let server = start_role(Upper, ServerConfig::default());
    assert_eq!(
        udp_round_trip(server.udp, "ça va? ß".as_bytes()),
        "ÇA VA? SS".as_bytes()
    );
    assert_eq!(
        udp_round_trip(server.udp, b"x\xffy"),
        "X\u{FFFD}Y".as_bytes()
    );
    server.stop();
}

#[test]
fn upper_over_udp_cuts_a_grown_reply_at_a_character_boundary() {
    // 'ŉ' is 2 bytes and upper-cases to "ʼN", 3: 30,000 of them (60,000 bytes, a valid
    // datagram) grow to 90,000, more than a datagram holds. The reply is cut, not lost.
    let server = start_role(Upper, ServerConfig::default());
    let input = "ŉ".repeat(30_000);
    let got = udp_round_trip(server.udp, input.as_bytes());
    // "ʼN" is U+02BC (2 bytes) and 'N': 21,835 of them and one more U+02BC fill 65,507.
    assert_eq!(got.len(), 65_507, "cut after the last character that fits");
    assert!(
        String::from_utf8(got).unwrap() == "ʼN".repeat(21_835) + "ʼ",
        "not the start of the upper-cased text"
    );
    server.stop();
}

#[test]
fn hello_greets_and_closes() {
    let server = start_role(Hello::new("Good morning"), ServerConfig::default());
    let mut s = client(server.tcp);
    assert_eq!(read_to_end(&mut s), b"Good morning\n");
    // A client that talks first still gets the whole greeting, with no reset.
    let mut chatty = client(server.tcp);
    chatty.write_all(b"hi there, who are you?\n").unwrap();
    assert_eq!(read_to_end(&mut chatty), b"Good morning\n");
    drop((s, chatty));
    wait_until("connection tasks to end", || server.stats.live_tasks() == 0);
    server.stop();
}

#[test]
fn rot13_example_is_a_complete_role() {
    let server = start_role(rot13::Rot13, ServerConfig::default());
    let mut s = client(server.tcp);
    s.write_all(b"Hello, World! \xff").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"Uryyb, Jbeyq! \xff");
    assert_eq!(udp_round_trip(server.udp, b"Uryyb"), b"Hello");
    server.stop();
}
