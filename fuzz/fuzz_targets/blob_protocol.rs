//! The blob protocol's requests and responses as a peer may send them:
//! decoding never panics, and a decoded request encodes back to its bytes.
#![no_main]

use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use peerpi_swarm::protocol;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        if let Ok(request) = protocol::read_request(&mut Cursor::new(data)).await {
            let mut out = Cursor::new(Vec::new());
            protocol::write_request(&mut out, &request).await.expect("writes to memory");
            let written = out.into_inner();
            assert_eq!(&data[..written.len()], &written[..]);
        }
        let _ = protocol::read_response(&mut Cursor::new(data)).await;
    });
});
