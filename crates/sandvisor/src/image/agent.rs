//! The agent that becomes the initrd's `/init`: where it is found, and the
//! check that it is statically linked.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use super::elf::{self, Linkage};
use super::manifest::sha256;
use super::{io_err, ImageError, AGENT_ENV};

fn check_static(path: &Path) -> Result<Linkage, ImageError> {
    let data = fs::read(path).map_err(io_err(path))?;
    Ok(elf::linkage(&data))
}

/// Where `image build` looks for the agent, in order, when neither
/// `--agent` nor `SANDVISOR_AGENT` names it: next to the running
/// executable, then in cargo's `--target x86_64-unknown-linux-gnu` output
/// beside it (same profile first, then release).
pub fn agent_candidates(exe: &Path) -> Vec<PathBuf> {
    let Some(exe_dir) = exe.parent() else {
        return Vec::new();
    };
    let mut out = vec![exe_dir.join("sandvisor-agent")];
    let profile = exe_dir.file_name().and_then(|p| p.to_str());
    if let Some(target_dir) = exe_dir.parent() {
        let triple = target_dir.join("x86_64-unknown-linux-gnu");
        let mut profiles = Vec::new();
        if let Some(p) = profile {
            profiles.push(p.to_string());
        }
        for p in ["release", "debug"] {
            if !profiles.iter().any(|q| q == p) {
                profiles.push(p.to_string());
            }
        }
        out.extend(
            profiles
                .iter()
                .map(|p| triple.join(p).join("sandvisor-agent")),
        );
    }
    out
}

/// Finds the agent: `explicit`, else `$SANDVISOR_AGENT`, else the first
/// statically linked one among [`agent_candidates`] of the running
/// executable.
///
/// # Errors
/// [`ImageError::AgentNotStatic`] when the agent named is not a static
/// executable; [`ImageError::AgentNotFound`] when no candidate is.
pub fn locate_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        env::var_os(AGENT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = named {
        return match check_static(&path)? {
            Linkage::Static => Ok(path),
            Linkage::Dynamic => Err(ImageError::AgentNotStatic {
                path,
                what: "dynamically linked",
            }),
            Linkage::NotElf => Err(ImageError::AgentNotStatic {
                path,
                what: "not an ELF executable",
            }),
        };
    }
    let exe = env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let searched = agent_candidates(&exe);
    let mut dynamic = Vec::new();
    for c in &searched {
        if !c.is_file() {
            continue;
        }
        match check_static(c)? {
            Linkage::Static => return Ok(c.clone()),
            _ => dynamic.push(c.clone()),
        }
    }
    Err(ImageError::AgentNotFound { searched, dynamic })
}

/// Reads the agent [`locate_agent`] finds; returns it and its SHA-256.
///
/// # Errors
/// As [`locate_agent`], and [`ImageError::Io`] when it cannot be read.
pub(super) fn read_agent(
    explicit: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<u8>, String), ImageError> {
    let agent_path = locate_agent(explicit)?;
    let agent = fs::read(&agent_path).map_err(io_err(&agent_path))?;
    let agent_hash = sha256(&agent);
    progress(&format!(
        "agent: {} (static, sha256 {})",
        agent_path.display(),
        &agent_hash[..12]
    ));
    Ok((agent, agent_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_candidates_cover_the_target_dir() {
        let c = agent_candidates(Path::new("/w/target/debug/sandvisor"));
        assert_eq!(
            c,
            [
                PathBuf::from("/w/target/debug/sandvisor-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/debug/sandvisor-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release/sandvisor-agent"),
            ]
        );
    }

    #[test]
    fn a_dynamic_agent_is_refused_with_the_build_command() {
        let exe = env::current_exe().expect("exe");
        // Test binaries are dynamically linked.
        if check_static(&exe).expect("readable") != Linkage::Dynamic {
            return;
        }
        let err = locate_agent(Some(&exe)).expect_err("dynamic");
        assert!(matches!(err, ImageError::AgentNotStatic { .. }));
        assert!(err.to_string().contains("crt-static"), "{err}");
    }

    #[test]
    fn not_an_elf_agent_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("agent");
        fs::write(&f, "#!/bin/sh\n").expect("write");
        let err = locate_agent(Some(&f)).expect_err("script");
        assert!(matches!(
            err,
            ImageError::AgentNotStatic {
                what: "not an ELF executable",
                ..
            }
        ));
    }
}
