//! The guest end of the agent channel: frames from the host, read from a
//! stream and decoded as the agent's server does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor_proto::frame;
use sandvisor_proto::HostMessage;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    // Several frames may come in one read; an oversized one is skipped.
    for _ in 0..8 {
        match frame::read_frame(&mut stream) {
            Ok(payload) => {
                let _ = frame::peek_id(&payload);
                if let Ok(msg) = frame::decode::<HostMessage>(&payload) {
                    frame::encode(&msg).expect("a decoded message encodes");
                }
            }
            Err(frame::FrameError::TooLarge { .. }) => {}
            Err(_) => break,
        }
    }
});
