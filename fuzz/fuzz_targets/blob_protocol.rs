//! The blob protocol's requests and responses as a peer may send them:
//! decoding never panics, and a decoded request encodes back to its bytes
//! (flag bits it does not know are ignored, so they are not written back).
#![no_main]

use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use peerpi_swarm::protocol;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        if let Ok(request) = protocol::read_request(&mut Cursor::new(data)).await {
            let mut out = Cursor::new(Vec::new());
            protocol::write_request(&mut out, &request)
                .await
                .expect("writes to memory");
            let written = out.into_inner();
            let mut expected = data[..written.len()].to_vec();
            if let Some(flags) = expected.last_mut() {
                *flags &= protocol::FLAG_CAN_REDIRECT | protocol::FLAG_ACCEPTS_IN_FLIGHT;
            }
            assert_eq!(expected, written);
        }
        let _ = protocol::read_response(&mut Cursor::new(data)).await;
    });
});
