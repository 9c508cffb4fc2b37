//! The host end of the agent channel: a header and a payload from the
//! guest, decoded as the client's reader does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor_proto::frame::{self, HEADER_LEN};
use sandvisor_proto::AgentMessage;

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(len) = frame::decode_header(*header) else {
        return;
    };
    let payload = &rest[..len.min(rest.len())];
    let _ = frame::peek_id(payload);
    if let Ok(msg) = frame::decode::<AgentMessage>(payload) {
        // What decodes encodes again.
        frame::encode(&msg).expect("a decoded message encodes");
    }
});
