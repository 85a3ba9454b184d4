//! Upper-case and greeting roles over real sockets.

mod common;

use std::io::Write;

use std::sync::Arc;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown;
use switchboard::net::stats::Stats;
use switchboard::role;
use switchboard::roles::hello::Hello;
use switchboard::roles::upper::Upper;
use switchboard::rt;

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
    // An invalid byte becomes U+FFFD (3 bytes). A reply may not be longer than its
    // request: here two dotless i ('ı', 2 bytes, upper-cased to 'I', 1) make the room;
    // without them the reply stops before the replacement character.
    assert_eq!(
        udp_round_trip(server.udp, b"\xc4\xb1\xc4\xb1x\xffy"),
        "IIX\u{FFFD}Y".as_bytes()
    );
    assert_eq!(udp_round_trip(server.udp, b"x\xffy"), b"X");
    server.stop();
}

#[test]
fn upper_over_udp_cuts_a_grown_reply_at_a_character_boundary() {
    // 'ŉ' is 2 bytes and upper-cases to "ʼN", 3: 30,000 of them (60,000 bytes) grow to
    // 90,000. A UDP reply is never longer than its request, so it is cut to 60,000 bytes
    // at a character boundary (this also keeps it under the 65,507 a datagram holds).
    let server = start_role(Upper, ServerConfig::default());
    let input = "ŉ".repeat(30_000);
    let got = udp_round_trip(server.udp, input.as_bytes());
    // "ʼN" is U+02BC (2 bytes) and 'N': 20,000 of them are exactly 60,000 bytes.
    assert_eq!(got.len(), 60_000, "cut after the last character that fits");
    assert!(
        String::from_utf8(got).unwrap() == "ʼN".repeat(20_000),
        "not the start of the upper-cased text"
    );
    server.stop();
}

#[test]
fn upper_over_udp_never_answers_with_more_bytes_than_it_got() {
    // A spoofed request must not buy a bigger reply for its victim. Each 0xFF byte
    // (invalid UTF-8) becomes U+FFFD (3 bytes); 'ΐ' (U+0390, 2 bytes) upper-cases to
    // three characters of 6 bytes. Before, both came back three times their size.
    let server = start_role(Upper, ServerConfig::default());
    let ff = vec![0xFFu8; 1000];
    let got = udp_round_trip(server.udp, &ff);
    // 333 replacement characters (999 bytes): a fourth of its 3 bytes would not fit.
    assert_eq!(got.len(), 999);
    assert!(String::from_utf8(got).unwrap() == "\u{FFFD}".repeat(333));

    let iota = "ΐ".repeat(50); // 100 bytes
    let got = udp_round_trip(server.udp, iota.as_bytes());
    // "ΐ" upper-cases to "Ϊ́" (U+0399 U+0308 U+0301, 2 bytes each): 16 whole ones (96
    // bytes) and the first two characters of the next (4 bytes) fill the 100.
    assert_eq!(got.len(), 100);
    let expected = "\u{399}\u{308}\u{301}".repeat(16) + "\u{399}\u{308}";
    assert!(String::from_utf8(got).unwrap() == expected);

    // The largest datagram over IPv4, all invalid: still no larger than the request.
    let big = vec![0xFFu8; 65_507];
    let got = udp_round_trip(server.udp, &big);
    assert_eq!(got.len(), 65_505); // 21,835 U+FFFD
    assert!(String::from_utf8(got).unwrap() == "\u{FFFD}".repeat(21_835));
    server.stop();
}

/// Binds a UDP socket on [::1], or says why the test is skipped.
fn ipv6_loopback() -> Option<std::net::UdpSocket> {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(s) => Some(s),
        Err(e) => {
            println!("SKIPPED: ::1 is unavailable here ({e}); the IPv6 datagram test did not run");
            None
        }
    }
}

#[test]
fn a_65520_byte_ipv6_datagram_is_received_whole() {
    // Over IPv6 a UDP payload can be 65,527 bytes, more than the 65,507 of IPv4: the
    // receive loop's buffer must hold it (before, it held 65,508 and cut the rest).
    let Some(client) = ipv6_loopback() else {
        return;
    };
    let udp = rt::block_on(switchboard::rt::UdpSocket::bind("[::1]:0")).unwrap();
    let server_addr = udp.local_addr().unwrap();
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(role::run(
        Arc::new(Upper),
        None,
        Some(udp),
        Arc::new(ServerConfig::default()),
        stats.clone(),
        shutdown,
    ));
    let mut sent = Vec::with_capacity(65_520);
    for i in 0..65_520u32 {
        sent.push(b'a' + (i % 26) as u8);
    }
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send_to(&sent, server_addr).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(n, 65_520, "the datagram was cut");
    assert!(buf[..n] == sent.to_ascii_uppercase()[..], "bytes changed");
    trigger.fire();
    rt::block_on(done);
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
