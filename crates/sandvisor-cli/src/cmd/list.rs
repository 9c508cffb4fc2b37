//! `sandvisor list` and `sandvisor state`.

use std::process::ExitCode;

use sandvisor::supervisor::{PluggedDevice, SandboxId, SandboxRecord};

use super::lifecycle::{block_on, manager};
use super::CmdResult;

/// The status column: the status, and a note when the supervisor is gone
/// (the next command on the sandbox re-attaches).
fn status(record: &SandboxRecord) -> String {
    let line = record.status_line();
    let supervisor_alive = record.supervisor.is_some_and(|s| s.is_alive());
    if !record.status.is_final() && !supervisor_alive {
        format!("{line} (supervisor gone)")
    } else {
        line
    }
}

/// Runs `sandvisor list`.
pub fn list(json: bool) -> CmdResult {
    let manager = manager()?;
    let records = block_on(manager.list())??;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<11} {:<21} {:<10} STATUS",
        "ID", "HYPERVISOR", "CREATED", "PID"
    );
    for r in &records {
        let pid = r
            .supervisor
            .map_or_else(|| "-".to_string(), |s| s.pid.to_string());
        println!(
            "{:<20} {:<11} {:<21} {:<10} {}",
            r.id,
            r.hypervisor.to_string(),
            r.created,
            pid,
            status(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor state`.
pub fn state(id: SandboxId, json: bool) -> CmdResult {
    let manager = manager()?;
    let r = block_on(manager.state(&id))??;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let or_dash = |p: Option<String>| p.unwrap_or_else(|| "-".to_string());
    println!("id:          {}", r.id);
    println!("hypervisor:  {}", r.hypervisor);
    println!("status:      {}", status(&r));
    println!("created:     {}", r.created);
    println!(
        "supervisor:  {}",
        or_dash(r.supervisor.map(|s| format!("pid {}", s.pid)))
    );
    println!(
        "vmm:         {}",
        or_dash(r.vmm.map(|v| format!("pid {}", v.pid)))
    );
    println!("vcpus:       {}", r.vcpus);
    println!("memory:      {} MiB", r.memory_mib);
    println!("control:     {}", r.control_socket.display());
    println!(
        "console:     {}",
        or_dash(r.console_socket.map(|p| p.display().to_string()))
    );
    println!("agent:       {}", or_dash(r.agent.map(|a| a.to_string())));
    for d in &r.devices {
        let line = match d {
            PluggedDevice::Block {
                path, guest_path, ..
            } => format!(
                "block {}{}",
                path.display(),
                guest_path
                    .as_deref()
                    .map(|g| format!(" as {g}"))
                    .unwrap_or_default()
            ),
            PluggedDevice::Net { tap, mac, .. } => format!("net {tap} ({mac})"),
            PluggedDevice::Memory { size_mib, slot } => {
                format!("memory {size_mib} MiB (slot {slot})")
            }
        };
        println!("device:      {line}");
    }
    if let Some(e) = &r.last_error {
        println!("last error:  {e}");
    }
    Ok(ExitCode::SUCCESS)
}
