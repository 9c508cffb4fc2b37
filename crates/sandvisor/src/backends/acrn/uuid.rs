//! The ACRN UUID pool.
//!
//! ACRN launches only VMs whose UUID it knows (a safety rule: the UUID
//! seeds the VM's virtual seed). The pool is Kata's eight UUIDs or a
//! configured list, capped by how many VMs the platform runs.
//!
//! Kata reads that cap with the ACRN device's platform-info ioctl; this
//! pool takes it from [`super::AcrnOptions::max_vms`] instead (the ioctl's
//! layout differs between ACRN releases, and no ACRN host is at hand to
//! check one against), and without it uses the whole pool.
//!
//! Who holds which UUID is kept in a JSON file under the runtime
//! directory, read and written under an exclusive `flock`, so parallel
//! creates get distinct UUIDs. Each entry names its owner by pid and start
//! time: first the creating process, then `acrn-dm` once it runs. An entry
//! whose owner is gone is free again, so a crash leaks nothing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::AcrnError;
use crate::process::ProcessRef;

/// The UUIDs Kata lets ACRN VMs use, in its order.
pub const KATA_UUIDS: [&str; 8] = [
    "a7ada506-1ab0-4b6b-a0da-e513ca9b8c2f",
    "dbeae168-26e4-4084-9227-622193e56325",
    "18ed60cd-e9ea-4bf4-8f87-8523fc8347a3",
    "3f90b6f8-449a-4e72-b99c-063a889fc422",
    "1ae8587b-e599-4b59-8260-6d14ac166a55",
    "75f3b94b-49ed-48fc-b019-577ef45adf2b",
    "ca62cf3c-8359-47e8-a3f7-de2d682dfb02",
    "e3189497-c3f6-4b97-9e2c-18ac0ab9064d",
];

/// Who holds a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The sandbox.
    pub id: String,
    /// The process whose life keeps the UUID taken.
    pub owner: ProcessRef,
}

/// The pool file's content: UUID to holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Table {
    taken: BTreeMap<String, Holder>,
}

/// A UUID pool backed by a locked file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidPool {
    file: PathBuf,
    uuids: Vec<String>,
}

impl UuidPool {
    /// The pool of `uuids`, capped at `max_vms` when given, kept in `file`.
    pub fn new(file: impl Into<PathBuf>, uuids: &[String], max_vms: Option<u32>) -> Self {
        let cap = max_vms.map_or(uuids.len(), |m| (m as usize).min(uuids.len()));
        UuidPool {
            file: file.into(),
            uuids: uuids[..cap].to_vec(),
        }
    }

    /// The pool file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> AcrnError + '_ {
        move |source| AcrnError::UuidPool {
            path: self.file.clone(),
            source,
        }
    }

    /// Runs `f` on the table under the lock, and writes it back.
    fn with_table<T>(&self, f: impl FnOnce(&mut Table) -> T) -> Result<T, AcrnError> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(self.io())?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.file)
            .map_err(self.io())?;
        let mut file: Flock<File> =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| self.io()(e.into()))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(self.io())?;
        let mut table: Table = if text.trim().is_empty() {
            Table::default()
        } else {
            serde_json::from_str(&text).map_err(|source| AcrnError::UuidPoolFormat {
                path: self.file.clone(),
                source,
            })?
        };
        // Holders that are gone free their UUID.
        table.taken.retain(|_, h| h.owner.is_alive());
        let out = f(&mut table);
        let text =
            serde_json::to_string_pretty(&table).map_err(|source| AcrnError::UuidPoolFormat {
                path: self.file.clone(),
                source,
            })?;
        file.set_len(0).map_err(self.io())?;
        file.seek(SeekFrom::Start(0)).map_err(self.io())?;
        file.write_all(text.as_bytes()).map_err(self.io())?;
        file.sync_data().map_err(self.io())?;
        Ok(out)
    }

    /// Takes a free UUID for sandbox `id`, held by `owner`.
    ///
    /// # Errors
    /// [`AcrnError::NoFreeUuid`] when every UUID is held; the file's errors.
    pub fn allocate(&self, id: &str, owner: ProcessRef) -> Result<String, AcrnError> {
        let uuids = &self.uuids;
        self.with_table(|t| {
            let free = uuids.iter().find(|u| !t.taken.contains_key(*u))?.clone();
            t.taken.insert(
                free.clone(),
                Holder {
                    id: id.to_string(),
                    owner,
                },
            );
            Some(free)
        })?
        .ok_or(AcrnError::NoFreeUuid {
            pool: self.uuids.len(),
        })
    }

    /// Hands `uuid` over to `owner` (the `acrn-dm` that now uses it).
    ///
    /// # Errors
    /// The file's errors.
    pub fn hand_over(&self, uuid: &str, id: &str, owner: ProcessRef) -> Result<(), AcrnError> {
        self.with_table(|t| {
            t.taken.insert(
                uuid.to_string(),
                Holder {
                    id: id.to_string(),
                    owner,
                },
            );
        })
    }

    /// Frees `uuid` if sandbox `id` holds it.
    ///
    /// # Errors
    /// The file's errors.
    pub fn release(&self, uuid: &str, id: &str) -> Result<(), AcrnError> {
        self.with_table(|t| {
            if t.taken.get(uuid).is_some_and(|h| h.id == id) {
                t.taken.remove(uuid);
            }
        })
    }

    /// The UUIDs held now, and by whom.
    ///
    /// # Errors
    /// The file's errors.
    pub fn holders(&self) -> Result<BTreeMap<String, Holder>, AcrnError> {
        self.with_table(|t| t.taken.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &Path, max: Option<u32>) -> UuidPool {
        let uuids: Vec<String> = KATA_UUIDS.iter().map(|s| s.to_string()).collect();
        UuidPool::new(dir.join("uuids.json"), &uuids, max)
    }

    #[test]
    fn uuids_are_distinct_until_the_pool_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pool(dir.path(), None);
        let me = ProcessRef::current();
        let got: std::collections::BTreeSet<String> = (0..8)
            .map(|i| p.allocate(&format!("s{i}"), me).expect("allocates"))
            .collect();
        assert_eq!(got.len(), 8);
        let e = p.allocate("s8", me).expect_err("pool is empty");
        assert!(matches!(e, AcrnError::NoFreeUuid { pool: 8 }), "{e}");
        p.release(KATA_UUIDS[3], "s3").expect("releases");
        assert_eq!(p.allocate("s9", me).expect("allocates"), KATA_UUIDS[3]);
        // Another sandbox cannot free a UUID it does not hold.
        p.release(KATA_UUIDS[0], "s9").expect("no-op");
        assert!(p.holders().expect("reads").contains_key(KATA_UUIDS[0]));
    }

    #[test]
    fn the_platform_cap_limits_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pool(dir.path(), Some(2));
        let me = ProcessRef::current();
        p.allocate("a", me).expect("first");
        p.allocate("b", me).expect("second");
        assert!(matches!(
            p.allocate("c", me),
            Err(AcrnError::NoFreeUuid { pool: 2 })
        ));
    }

    #[test]
    fn a_dead_holder_frees_its_uuid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pool(dir.path(), Some(1));
        let mut child = std::process::Command::new("true").spawn().expect("spawns");
        let pid = child.id();
        let gone = ProcessRef::of(pid);
        child.wait().expect("reaps");
        p.allocate("a", gone).expect("allocates");
        // Its holder is gone: the UUID is free again.
        p.allocate("b", ProcessRef::current()).expect("reallocates");
    }
}
