//! `Param`: a key/value pair for kernel and hypervisor parameters.

use serde::{Deserialize, Serialize};

/// A key/value pair, such as a kernel command-line parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Param {
    /// The key; may be empty for a bare value.
    pub key: String,
    /// The value; may be empty for a bare key.
    pub value: String,
}

/// A kernel parameter with an empty key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("empty kernel parameter key (value {value:?})")]
pub struct EmptyParamKey {
    /// The value that came without a key.
    pub value: String,
}

impl Param {
    /// A parameter from a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Param {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Appends `key`/`value` to `params`.
pub fn append_param(mut params: Vec<Param>, key: &str, value: &str) -> Vec<Param> {
    params.push(Param::new(key, value));
    params
}

/// Turns parameters into strings joined by `delim`.
///
/// A parameter with neither key nor value is skipped; one with only a key or
/// only a value gives that alone; with an empty `delim`, key and value are
/// two separate elements.
///
/// ```
/// use sandvisor::param::{serialize_params, Param};
/// let p = [Param::new("console", "hvc0"), Param::new("quiet", "")];
/// assert_eq!(serialize_params(&p, "="), ["console=hvc0", "quiet"]);
/// assert_eq!(serialize_params(&p, ""), ["console", "hvc0", "quiet"]);
/// ```
pub fn serialize_params(params: &[Param], delim: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        match (p.key.is_empty(), p.value.is_empty()) {
            (true, true) => {}
            (true, false) => out.push(p.value.clone()),
            (false, true) => out.push(p.key.clone()),
            (false, false) if delim.is_empty() => {
                out.push(p.key.clone());
                out.push(p.value.clone());
            }
            (false, false) => out.push(format!("{}{delim}{}", p.key, p.value)),
        }
    }
    out
}

/// Turns `key=value` strings into parameters, splitting on the first `=`.
/// Empty strings are skipped.
///
/// ```
/// use sandvisor::param::{deserialize_params, Param};
/// assert_eq!(
///     deserialize_params(["a=b=c", "", "ro"]),
///     [Param::new("a", "b=c"), Param::new("ro", "")]
/// );
/// ```
pub fn deserialize_params<I, S>(parameters: I) -> Vec<Param>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    parameters
        .into_iter()
        .filter(|s| !s.as_ref().is_empty())
        .map(|s| match s.as_ref().split_once('=') {
            Some((k, v)) => Param::new(k, v),
            None => Param::new(s.as_ref(), ""),
        })
        .collect()
}

/// Kernel root parameters for an NVDIMM image mapped with DAX.
pub fn nvdimm_kernel_root_params() -> Vec<Param> {
    vec![
        Param::new("root", "/dev/pmem0p1"),
        Param::new("rootflags", "dax,data=ordered,errors=remount-ro ro"),
        Param::new("rootfstype", "ext4"),
    ]
}

/// Kernel root parameters for an NVDIMM image without DAX.
pub fn nvdimm_no_dax_kernel_root_params() -> Vec<Param> {
    vec![
        Param::new("root", "/dev/pmem0p1"),
        Param::new("rootflags", "data=ordered,errors=remount-ro ro"),
        Param::new("rootfstype", "ext4"),
    ]
}

/// Kernel root parameters for an image on virtio-blk.
pub fn virtio_blk_kernel_root_params() -> Vec<Param> {
    vec![
        Param::new("root", "/dev/vda1"),
        Param::new("rootflags", "data=ordered,errors=remount-ro ro"),
        Param::new("rootfstype", "ext4"),
    ]
}
