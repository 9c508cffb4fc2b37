//! Replies from the Cloud Hypervisor and Firecracker APIs: a status and a
//! body, decoded into the typed replies and faults the client returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor::backends::clh::api as ch;
use sandvisor::backends::firecracker::api as fc;
use sandvisor::backends::vmm::rest::{fuzz_decode, Flavour};

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    // 100..=699 covers every status hyper hands over.
    let status = 100 + u16::from_be_bytes(*status) % 600;
    let (c, f) = (Flavour::CloudHypervisor, Flavour::Firecracker);
    let _ = fuzz_decode(&ch::VmmPing, c, status, body);
    let _ = fuzz_decode(&ch::VmInfoGet, c, status, body);
    let _ = fuzz_decode(&ch::VmBoot, c, status, body);
    let _ = fuzz_decode(&fc::GetInstanceInfo, f, status, body);
    let _ = fuzz_decode(&fc::GetVersion, f, status, body);
    let _ = fuzz_decode(&fc::GetVmConfig, f, status, body);
    let _ = fuzz_decode(&fc::GetMemoryHotplug, f, status, body);
    if let Err(e) = fuzz_decode(&fc::GetMachineConfig, f, status, body) {
        let _ = e.to_string();
    }
});
