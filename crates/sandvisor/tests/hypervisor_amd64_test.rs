//! Kata 1.x `virtcontainers/hypervisor_amd64_test.go`: telling whether the
//! host is itself a VM from `/proc/cpuinfo`.

use std::io::Write;

use sandvisor::probe::{self, ProbeError};

const FLAGS_WITHOUT_HYPERVISOR: &str = "
fpu_exception   : yes
cpuid level     : 20
wp              : yes
flags           : fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology eagerfpu pni pclmulqdq vmx ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch tpr_shadow vnmi ept vpid fsgsbase bmi1 hle avx2 smep bmi2 erms rtm rdseed adx smap xsaveopt
bugs            :
bogomips        : 4589.35
";

const FLAGS_WITH_HYPERVISOR: &str = "
fpu_exception   : yes
cpuid level     : 20
wp              : yes
flags           : fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology eagerfpu pni pclmulqdq vmx ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch tpr_shadow vnmi ept vpid fsgsbase bmi1 hle avx2 smep bmi2 erms rtm rdseed adx smap xsaveopt
bugs            :
bogomips        : 4589.35
";

const WITHOUT_FLAGS_FIELD: &str = "
fpu_exception   : yes
cpuid level     : 20
wp              : yes
bugs            :
bogomips        : 4589.35
";

struct NestedVmmCase {
    content: &'static str,
    expected_err: bool,
    expected: bool,
}

fn generic_test_running_on_vmm(cases: &[NestedVmmCase]) {
    for case in cases {
        let mut f = tempfile::NamedTempFile::new().expect("temp cpuinfo");
        f.write_all(case.content.as_bytes()).expect("write cpuinfo");
        match probe::running_on_vmm(f.path()) {
            Ok(running) => {
                assert!(!case.expected_err, "this case should fail");
                assert_eq!(running, case.expected);
            }
            Err(e) => {
                assert!(case.expected_err, "this case should succeed: {e}");
                assert!(!case.expected);
            }
        }
    }
}

#[test]
fn running_on_vmm() {
    generic_test_running_on_vmm(&[
        NestedVmmCase {
            content: FLAGS_WITHOUT_HYPERVISOR,
            expected_err: false,
            expected: false,
        },
        NestedVmmCase {
            content: FLAGS_WITH_HYPERVISOR,
            expected_err: false,
            expected: true,
        },
        NestedVmmCase {
            content: WITHOUT_FLAGS_FIELD,
            expected_err: true,
            expected: false,
        },
    ]);
}

#[test]
fn running_on_vmm_not_existing_cpu_info_path_failure() {
    let f = tempfile::NamedTempFile::new().expect("temp cpuinfo");
    let path = f.path().to_path_buf();
    drop(f);
    assert!(matches!(
        probe::running_on_vmm(&path),
        Err(ProbeError::Read { .. })
    ));
}
