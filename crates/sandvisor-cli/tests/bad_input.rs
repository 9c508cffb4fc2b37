//! The bad-input table: config files and command-line flags that must be
//! refused at once, each with a non-zero exit, a message that names the
//! key, value or path and says what to do, and no panic. None boots a VM;
//! the cases against a live sandbox are in `vm_bad_input.rs`.

mod bad_input_support;

use bad_input_support::{run_table, Case};

const CASES: &[Case] = &[
    // --- TOML syntax and shape -------------------------------------------
    Case {
        name: "unclosed table header",
        config: Some("[hypervisor.qemu\npath = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["TOML syntax error", "line 1", "configuration.toml"],
    },
    Case {
        name: "unterminated string",
        config: Some("[hypervisor.qemu]\npath = \"/usr/bin/qemu\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["TOML syntax error", "line 2"],
    },
    Case {
        name: "not TOML at all",
        config: Some("this is not toml\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["TOML syntax error", "line 1"],
    },
    Case {
        name: "a key given twice",
        config: Some("[hypervisor.qemu]\ndefault_memory = 512\ndefault_memory = 1024\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["duplicate key", "default_memory"],
    },
    Case {
        name: "empty file",
        config: Some(""),
        args: &["env", "--config", "{cfg}"],
        needles: &["no [hypervisor.*] section", "add one"],
    },
    Case {
        name: "only a factory section",
        config: Some("[factory]\nenable_template = true\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["no [hypervisor.*] section", "[hypervisor.qemu]"],
    },
    Case {
        name: "hypervisor is a string, not a table",
        config: Some("hypervisor = \"qemu\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["[hypervisor]", "must be a table"],
    },
    Case {
        name: "hypervisor.qemu is a number",
        config: Some("[hypervisor]\nqemu = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["[hypervisor.qemu]", "must be a table"],
    },
    Case {
        name: "unknown hypervisor section",
        config: Some("[hypervisor.vbox]\npath = \"/x\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["[hypervisor.vbox]", "expected one of qemu, clh, firecracker, acrn"],
    },
    Case {
        name: "two hypervisor sections and no choice",
        config: Some("[hypervisor.qemu]\n[hypervisor.clh]\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["several hypervisor sections", "clh, qemu", "--hypervisor"],
    },
    Case {
        name: "--hypervisor names a section the file lacks",
        config: Some("[hypervisor.qemu]\n"),
        args: &["env", "--config", "{cfg}", "--hypervisor", "clh"],
        needles: &["clh"],
    },
    // --- types -----------------------------------------------------------
    Case {
        name: "vCPUs as a word",
        config: Some("[hypervisor.qemu]\ndefault_vcpus = \"two\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"default_vcpus\"", "[hypervisor.qemu]", "expected a number"],
    },
    Case {
        name: "memory as a boolean",
        config: Some("[hypervisor.qemu]\ndefault_memory = true\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"default_memory\"", "expected an integer"],
    },
    Case {
        name: "boolean as an integer",
        config: Some("[hypervisor.qemu]\nenable_hugepages = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"enable_hugepages\"", "true or false"],
    },
    Case {
        name: "kernel_params as a number",
        config: Some("[hypervisor.qemu]\nkernel_params = 42\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"kernel_params\"", "expected a string"],
    },
    Case {
        name: "cpu_features as an array",
        config: Some("[hypervisor.qemu]\ncpu_features = [\"pmu=off\"]\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"cpu_features\"", "expected a string, found an array"],
    },
    Case {
        name: "factory flag as a string",
        config: Some("[hypervisor.qemu]\n[factory]\nenable_template = \"yes\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"enable_template\"", "[factory]", "true or false"],
    },
    Case {
        name: "clh memory_slots as a string",
        config: Some("[hypervisor.clh]\nmemory_slots = \"ten\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"memory_slots\"", "[hypervisor.clh]", "expected an integer"],
    },
    Case {
        name: "firecracker memory_slots as a string",
        config: Some("[hypervisor.firecracker]\nmemory_slots = \"ten\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"memory_slots\"", "[hypervisor.firecracker]"],
    },
    // --- unknown and misspelt keys -----------------------------------------
    Case {
        name: "unknown key",
        config: Some("[hypervisor.qemu]\nflux_capacitor = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["unknown key \"flux_capacitor\"", "remove it"],
    },
    Case {
        name: "misspelt key",
        config: Some("[hypervisor.qemu]\ndefualt_memory = 512\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"defualt_memory\"", "did you mean \"default_memory\""],
    },
    Case {
        name: "misspelt firecracker key",
        config: Some("[hypervisor.firecracker]\njailer_pathh = \"/x\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["[hypervisor.firecracker]", "did you mean \"jailer_path\""],
    },
    Case {
        name: "unknown clh key",
        config: Some("[hypervisor.clh]\nbogus = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["unknown key \"bogus\"", "[hypervisor.clh]"],
    },
    Case {
        name: "misspelt acrn key",
        config: Some("[hypervisor.acrn]\nctlpth = \"/usr/bin/acrnctl\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"ctlpth\"", "[hypervisor.acrn]", "did you mean \"ctlpath\""],
    },
    Case {
        name: "misspelt factory key",
        config: Some("[hypervisor.qemu]\n[factory]\ntemplate_pathx = \"/x\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["[factory]", "did you mean \"template_path\""],
    },
    // --- values out of range or not allowed ---------------------------------
    Case {
        name: "memory below the minimum",
        config: Some("[hypervisor.qemu]\ndefault_memory = 16\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["default_memory 16 MiB", "256", "give at least"],
    },
    Case {
        name: "clh memory below the minimum",
        config: Some("[hypervisor.clh]\ndefault_memory = 16\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["default_memory 16 MiB", "give at least 256"],
    },
    Case {
        name: "virtio_fs_cache that does not exist",
        config: Some(
            "[hypervisor.qemu]\nshared_fs = \"virtio-fs\"\nvirtio_fs_cache = \"sometimes\"\n",
        ),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"sometimes\"", "virtio_fs_cache", "expected one of"],
    },
    Case {
        name: "msize_9p far too small",
        config: Some("[hypervisor.qemu]\nmsize_9p = 100\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["msize_9p", "100", "expected 4096 to"],
    },
    Case {
        name: "negative bridges",
        config: Some("[hypervisor.qemu]\ndefault_bridges = -1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"default_bridges\"", "-1 is out of range"],
    },
    Case {
        name: "negative max vCPUs",
        config: Some("[hypervisor.qemu]\ndefault_maxvcpus = -3\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"default_maxvcpus\"", "out of range"],
    },
    Case {
        name: "negative template cache",
        config: Some("[hypervisor.qemu]\n[factory]\nvm_cache_number = -1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"vm_cache_number\"", "out of range"],
    },
    Case {
        name: "block driver that does not exist",
        config: Some("[hypervisor.qemu]\nblock_device_driver = \"floppy\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"floppy\"", "expected one of virtio-scsi"],
    },
    Case {
        name: "accelerator that does not exist",
        config: Some("[hypervisor.qemu]\naccel = \"warp\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"warp\"", "expected one of auto, kvm, tcg"],
    },
    Case {
        name: "shared filesystem that does not exist",
        config: Some("[hypervisor.qemu]\nshared_fs = \"nfs\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"nfs\"", "virtio-fs"],
    },
    // --- keys or values the section's hypervisor cannot honour --------------
    Case {
        name: "virtio-fs on firecracker",
        config: Some("[hypervisor.firecracker]\nshared_fs = \"virtio-fs\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &[
            "shared_fs = \"virtio-fs\"",
            "[hypervisor.firecracker]",
            "firecracker cannot honour it",
            "expected one of none",
        ],
    },
    Case {
        name: "9p on clh",
        config: Some("[hypervisor.clh]\nshared_fs = \"virtio-9p\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["shared_fs = \"virtio-9p\"", "[hypervisor.clh]", "expected one of virtio-fs, none"],
    },
    Case {
        name: "virtio-fs on acrn",
        config: Some("[hypervisor.acrn]\nshared_fs = \"virtio-fs\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["shared_fs = \"virtio-fs\"", "[hypervisor.acrn]", "expected one of none"],
    },
    Case {
        name: "nydus, which no backend runs",
        config: Some("[hypervisor.qemu]\nshared_fs = \"virtio-fs-nydus\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"virtio-fs-nydus\"", "expected one of virtio-9p, virtio-fs, none"],
    },
    Case {
        name: "virtiofsd on firecracker",
        config: Some("[hypervisor.firecracker]\nvirtio_fs_daemon = \"/usr/lib/qemu/virtiofsd\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["virtio_fs_daemon", "[hypervisor.firecracker]", "read by qemu and clh only"],
    },
    Case {
        name: "virtio-scsi on firecracker",
        config: Some("[hypervisor.firecracker]\nblock_device_driver = \"virtio-scsi\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"virtio-scsi\"", "expected one of virtio-mmio, virtio-blk"],
    },
    Case {
        name: "virtio-scsi on clh",
        config: Some("[hypervisor.clh]\nblock_device_driver = \"virtio-scsi\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"virtio-scsi\"", "[hypervisor.clh]", "expected one of virtio-blk"],
    },
    Case {
        name: "virtio-blk-ccw on x86 qemu",
        config: Some("[hypervisor.qemu]\nblock_device_driver = \"virtio-blk-ccw\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["\"virtio-blk-ccw\"", "expected one of virtio-scsi, virtio-blk, nvdimm"],
    },
    Case {
        name: "firecracker's hot-plug transport on qemu",
        config: Some("[hypervisor.qemu]\nhotplug_transport = \"mmio\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["hotplug_transport", "[hypervisor.qemu]", "read by firecracker only"],
    },
    Case {
        name: "drive placeholders on clh",
        config: Some("[hypervisor.clh]\ndrive_placeholders = 2\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["drive_placeholders = 2", "remove it"],
    },
    Case {
        name: "a hybrid vsock daemon on firecracker",
        config: Some("[hypervisor.firecracker]\nvhost_user_vsock_daemon = \"/bin/vdv\"\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["vhost_user_vsock_daemon", "read by qemu only"],
    },
    Case {
        name: "machine type QEMU is not driven with",
        config: Some("[hypervisor.qemu]\nmachine_type = \"pc-banana\"\n"),
        args: &["create", "--config", "{cfg}", "--id", "mach"],
        needles: &["\"pc-banana\"", "expected q35, pc or microvm"],
    },
    Case {
        name: "check of a machine type create refuses",
        config: Some("[hypervisor.qemu]\nmachine_type = \"pc-banana\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["no  config", "machine_type \"pc-banana\"", "expected q35, pc or microvm"],
    },
    // --- conflicting keys ----------------------------------------------------
    Case {
        name: "image and initrd both set",
        config: Some(
            "[hypervisor.qemu]\nimage = \"{assets}/vmlinux\"\ninitrd = \"{assets}/initrd.img\"\n",
        ),
        args: &["env", "--config", "{cfg}"],
        needles: &["are both set", "keep only one"],
    },
    Case {
        name: "more boot vCPUs than the maximum",
        config: Some("[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 1\n"),
        args: &["env", "--config", "{cfg}"],
        needles: &["default_vcpus (2)", "default_maxvcpus (1)", "lower default_vcpus"],
    },
    // --- files that are missing or directories -------------------------------
    Case {
        name: "config file missing",
        config: None,
        args: &["env", "--config", "{dir}/nope.toml"],
        needles: &["nope.toml", "check the path"],
    },
    Case {
        name: "config file is a directory",
        config: None,
        args: &["env", "--config", "{dir}"],
        needles: &["is a directory", "name the configuration.toml"],
    },
    Case {
        name: "create with a missing config file",
        config: None,
        args: &["create", "--config", "{dir}/nope.toml"],
        needles: &["nope.toml", "check the path"],
    },
    Case {
        name: "kernel missing",
        config: Some("[hypervisor.qemu]\nkernel = \"{dir}/vmlinux\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["vmlinux is missing", "sandvisor image build"],
    },
    Case {
        name: "kernel is a directory",
        config: Some("[hypervisor.qemu]\nkernel = \"{dir}\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["is a directory, not a file", "point the key at an existing file"],
    },
    Case {
        name: "initrd missing",
        config: Some("[hypervisor.qemu]\ninitrd = \"{dir}/initrd.img\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["initrd.img is missing", "sandvisor image build"],
    },
    Case {
        name: "QEMU binary missing",
        config: Some("[hypervisor.qemu]\npath = \"{dir}/qemu\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["qemu is missing", "set `path`"],
    },
    Case {
        name: "QEMU binary is a directory",
        config: Some("[hypervisor.qemu]\npath = \"{dir}\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["is a directory, not a file", "set `path`"],
    },
    Case {
        name: "virtiofsd missing",
        config: Some(
            "[hypervisor.qemu]\nshared_fs = \"virtio-fs\"\nvirtio_fs_daemon = \"{dir}/virtiofsd\"\n",
        ),
        args: &["check", "--config", "{cfg}"],
        needles: &["virtiofsd is missing", "virtio_fs_daemon"],
    },
    Case {
        name: "clh firmware missing",
        config: Some("[hypervisor.clh]\nfirmware = \"{dir}/fw.bin\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["fw.bin is missing", "unset `firmware`"],
    },
    Case {
        name: "clh binary is a directory",
        config: Some("[hypervisor.clh]\npath = \"{dir}\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["is a directory, not a file", "or set `path`"],
    },
    Case {
        name: "firecracker jailer missing",
        config: Some("[hypervisor.firecracker]\njailer_path = \"{dir}/jailer\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["jailer is missing", "unset `jailer_path`"],
    },
    Case {
        name: "firecracker binary missing",
        config: Some("[hypervisor.firecracker]\npath = \"{dir}/firecracker\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["firecracker is missing", "set `path`"],
    },
    Case {
        name: "acrnctl missing",
        config: Some("[hypervisor.acrn]\nctlpath = \"{dir}/acrnctl\"\n"),
        args: &["check", "--config", "{cfg}"],
        needles: &["acrnctl is missing", "ACRN Service VM"],
    },
    // --- command-line flags and ids ----------------------------------------
    Case {
        name: "id with a slash",
        config: None,
        args: &["create", "--id", "a/b"],
        needles: &["invalid sandbox id \"a/b\"", "use 1 to 64 of"],
    },
    Case {
        name: "id too long",
        config: None,
        args: &[
            "state",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ],
        needles: &["invalid sandbox id", "use 1 to 64"],
    },
    Case {
        name: "id starting with a dot",
        config: None,
        args: &["start", ".hidden"],
        needles: &["invalid sandbox id \".hidden\"", "starting with a letter or digit"],
    },
    Case {
        name: "state of a sandbox that does not exist",
        config: None,
        args: &["state", "nosuch"],
        needles: &["no sandbox \"nosuch\"", "sandvisor list"],
    },
    Case {
        name: "start of a sandbox that does not exist",
        config: None,
        args: &["start", "nosuch"],
        needles: &["no sandbox \"nosuch\"", "sandvisor list"],
    },
    Case {
        name: "exec in a sandbox that does not exist",
        config: None,
        args: &["exec", "nosuch", "--", "true"],
        needles: &["no sandbox \"nosuch\"", "sandvisor list"],
    },
    Case {
        name: "delete of a sandbox that does not exist",
        config: None,
        args: &["delete", "nosuch"],
        needles: &["no sandbox \"nosuch\""],
    },
    Case {
        name: "hotplug into a sandbox that does not exist",
        config: None,
        args: &["hotplug", "nosuch", "cpu", "1"],
        needles: &["no sandbox \"nosuch\""],
    },
    Case {
        name: "unknown hypervisor type",
        config: None,
        args: &["create", "--hypervisor", "vbox"],
        needles: &["\"vbox\"", "expected one of qemu"],
    },
    Case {
        name: "no vCPUs",
        config: None,
        args: &["create", "--cpus", "0"],
        needles: &["0 vCPUs", "ask for 1 to"],
    },
    Case {
        name: "more vCPUs than the host has (create)",
        config: None,
        args: &["create", "--cpus", "999"],
        needles: &["999 vCPUs", "this host has", "--cpus"],
    },
    Case {
        name: "more vCPUs than the host has (run)",
        config: None,
        args: &["run", "--cpus", "999", "--", "true"],
        needles: &["999 vCPUs", "--cpus"],
    },
    Case {
        name: "more memory than the host has (create)",
        config: None,
        args: &["create", "--memory", "99999999"],
        needles: &["99999999 MiB", "this host has", "--memory"],
    },
    Case {
        name: "more memory than the host has (run)",
        config: None,
        args: &["run", "--memory", "99999999", "--", "true"],
        needles: &["99999999 MiB", "--memory"],
    },
    Case {
        name: "too little memory",
        config: None,
        args: &["create", "--memory", "10"],
        needles: &["10 MiB", "256"],
    },
    Case {
        name: "memory as a word",
        config: None,
        args: &["run", "--memory", "lots", "--", "true"],
        needles: &["'lots'", "--memory"],
    },
    Case {
        name: "zero timeout",
        config: None,
        args: &["run", "--timeout", "0", "--", "true"],
        needles: &["'0'", "--timeout"],
    },
    Case {
        name: "resize with nothing to change",
        config: None,
        args: &["resize", "nosuch"],
        needles: &["give --cpus and/or --memory"],
    },
    Case {
        name: "hot-plug a disk that does not exist",
        config: None,
        args: &["hotplug", "nosuch", "block", "{dir}/disk.img"],
        needles: &["disk.img", "give an existing disk image"],
    },
    Case {
        name: "hot-plug a directory as a disk",
        config: None,
        args: &["hotplug", "nosuch", "block", "{dir}"],
        needles: &["is a directory", "give a disk image or block device"],
    },
    Case {
        name: "exec without a command",
        config: None,
        args: &["exec", "nosuch"],
        needles: &["<COMMAND>"],
    },
    Case {
        name: "unknown subcommand",
        config: None,
        args: &["frobnicate"],
        needles: &["'frobnicate'"],
    },
];

#[test]
fn every_bad_input_is_refused_with_a_useful_message() {
    assert!(CASES.len() >= 50, "{} cases", CASES.len());
    let runtime = tempfile::Builder::new()
        .prefix("svbad")
        .tempdir_in("/tmp")
        .expect("runtime dir");
    let failures = run_table(CASES, runtime.path(), |_| {
        // A refused command leaves no sandbox behind. The CLI's own log
        // (`sandvisor.log`, where library log lines go without `--log`) is
        // not a sandbox's.
        let left: Vec<_> = std::fs::read_dir(runtime.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .filter(|n| n != "vm" && n != "sandvisor.log")
                    .collect()
            })
            .unwrap_or_default();
        (!left.is_empty()).then(|| format!("left {left:?} in the runtime directory"))
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
