//! Keeping VLAN tags in the frames XDP sees.
//!
//! A NIC with RX VLAN offload on (`rx-vlan-offload`, and
//! `rx-vlan-stag-hw-parse` for 802.1ad) strips the tag into the receive
//! descriptor before XDP runs: `lb_ingress` then sees a frame for VLAN 100 as
//! an untagged one and would balance it, and answer its ARP, as if it came
//! from the untagged LAN. With the offload off the tag stays in the frame,
//! where the data path's rule for tagged frames (passed untouched, counted
//! `pass_vlan`) applies, and the kernel still untags them in software for
//! the node's own VLAN interfaces.
//!
//! A veth never strips anything: a tag reaches the veth already moved to
//! skb metadata by its sender (the peer's TX VLAN offload, or a bridge that
//! untagged it on the way), out of this node's reach. XDP sees those frames
//! untagged whatever is set here; the agent says so when the uplink is a
//! veth (see the README, "VLAN-tagged frames").
//!
//! Done with the `SIOCETHTOOL` ioctl (the features commands, by feature
//! name), in the calling thread's network namespace.

use std::{io, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The features that strip VLAN tags before XDP: 802.1Q, then 802.1ad.
pub const RX_VLAN_FEATURES: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// What [`keep_vlan_tags`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VlanTags {
    /// The driver's name (`veth`, `ixgbe`, …), where the interface has one.
    pub driver: Option<String>,
    /// Features that were on and are now off.
    pub turned_off: Vec<&'static str>,
    /// Features that are on and the driver does not let us turn off.
    pub stuck_on: Vec<&'static str>,
}

impl VlanTags {
    /// Whether XDP sees every tag in the frame on this interface.
    pub fn tags_in_frame(&self) -> bool {
        self.stuck_on.is_empty() && !self.is_veth()
    }

    /// A veth: tags arrive as their sender left them (see the module docs).
    pub fn is_veth(&self) -> bool {
        self.driver.as_deref() == Some("veth")
    }
}

/// Turns RX VLAN offload off on `name` where it is on and changeable, and
/// reports what is left. Logging is the caller's.
pub fn keep_vlan_tags(name: &str) -> Result<VlanTags> {
    let fd = socket()?;
    // Devices without a driver of their own (lo) have no answer: not an
    // error, the features below are what matters.
    let driver = driver(&fd, name).ok();
    let names =
        feature_names(&fd, name).with_context(|| format!("reading the feature names of {name}"))?;
    let bits: Vec<(&'static str, usize)> = RX_VLAN_FEATURES
        .iter()
        .filter_map(|f| Some((*f, names.iter().position(|n| n == f)?)))
        .collect();
    let blocks = names.len().div_ceil(32);
    let before =
        features(&fd, name, blocks).with_context(|| format!("reading the features of {name}"))?;
    let mut out = VlanTags {
        driver,
        ..VlanTags::default()
    };
    let mut change = Vec::new();
    for &(f, bit) in &bits {
        if !before.active(bit) {
            continue;
        }
        if before.changeable(bit) {
            change.push(bit);
        } else {
            out.stuck_on.push(f);
        }
    }
    if !change.is_empty() {
        set_off(&fd, name, blocks, &change)
            .with_context(|| format!("turning RX VLAN offload off on {name}"))?;
        let after = features(&fd, name, blocks)
            .with_context(|| format!("reading the features of {name}"))?;
        for &(f, bit) in &bits {
            if change.contains(&bit) {
                if after.active(bit) {
                    out.stuck_on.push(f);
                } else {
                    out.turned_off.push(f);
                }
            }
        }
    }
    Ok(out)
}

fn socket() -> Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for ethtool ioctls");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// One `SIOCETHTOOL` call on `name` with `data` (an ethtool command
/// structure, its first word the command) as the request.
fn ethtool(fd: &std::os::fd::OwnedFd, name: &str, data: &mut [u32]) -> Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("bad interface name {name:?}");
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    req.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: req names the interface (NUL-terminated: shorter than
    // IFNAMSIZ, the rest zero) and points at `data`, which is as large as
    // the command's structure says (each caller sizes it from the counts it
    // put in it) and outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("ethtool command {:#x}", data[0]));
    }
    Ok(())
}

/// `struct ethtool_drvinfo` is 196 bytes: the command, then the driver
/// name (32 bytes), then more we do not read.
fn driver(fd: &std::os::fd::OwnedFd, name: &str) -> Result<String> {
    let mut d = [0u32; 49];
    d[0] = ETHTOOL_GDRVINFO;
    ethtool(fd, name, &mut d)?;
    Ok(c_string(&words_bytes(&d[1..9])))
}

fn feature_names(fd: &std::os::fd::OwnedFd, name: &str) -> Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, then one u32
    // per set asked for.
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    let mask = 1u64 << ETH_SS_FEATURES;
    info[2..4].copy_from_slice(&u64_words(mask));
    ethtool(fd, name, &mut info)?;
    let count = usize::try_from(info[4]).context("feature count")?;
    // struct ethtool_gstrings: cmd, string_set, len, then len strings.
    let mut s = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    s[0] = ETHTOOL_GSTRINGS;
    s[1] = ETH_SS_FEATURES;
    s[2] = info[4];
    ethtool(fd, name, &mut s)?;
    let bytes = words_bytes(&s[3..]);
    Ok(bytes.chunks(ETH_GSTRING_LEN).map(c_string).collect())
}

/// `ETHTOOL_GFEATURES`: per 32-bit block, available (changeable),
/// requested, active and never-changed words.
struct Features(Vec<u32>);

impl Features {
    fn word(&self, bit: usize, field: usize) -> bool {
        self.0
            .get(2 + (bit / 32) * 4 + field)
            .is_some_and(|w| w & (1 << (bit % 32)) != 0)
    }
    fn changeable(&self, bit: usize) -> bool {
        self.word(bit, 0)
    }
    fn active(&self, bit: usize) -> bool {
        self.word(bit, 2)
    }
}

fn features(fd: &std::os::fd::OwnedFd, name: &str, blocks: usize) -> Result<Features> {
    let mut f = vec![0u32; 2 + blocks * 4];
    f[0] = ETHTOOL_GFEATURES;
    f[1] = u32::try_from(blocks).context("feature blocks")?;
    ethtool(fd, name, &mut f)?;
    Ok(Features(f))
}

/// `ETHTOOL_SFEATURES`: per block a valid mask (what to change) and the
/// requested values (all off here). The kernel answers with flags (not an
/// error) when a request is only partly met; the caller reads back.
fn set_off(fd: &std::os::fd::OwnedFd, name: &str, blocks: usize, bits: &[usize]) -> Result<()> {
    let mut s = vec![0u32; 2 + blocks * 2];
    s[0] = ETHTOOL_SFEATURES;
    s[1] = u32::try_from(blocks).context("feature blocks")?;
    for &bit in bits {
        s[2 + (bit / 32) * 2] |= 1 << (bit % 32);
    }
    ethtool(fd, name, &mut s)
}

fn u64_words(v: u64) -> [u32; 2] {
    let b = v.to_ne_bytes();
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    ]
}

fn words_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_vlan_offload_to_turn_off() {
        // lo exists in every namespace and strips nothing; what matters is
        // that every command went through and the names were found.
        let t = keep_vlan_tags("lo").expect("ethtool on lo");
        assert!(!t.is_veth());
        assert!(t.turned_off.is_empty() && t.stuck_on.is_empty(), "{t:?}");
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_it() {
        let err = keep_vlan_tags("nosuchif0").expect_err("must not exist");
        assert!(format!("{err:#}").contains("nosuchif0"), "{err:#}");
    }

    #[test]
    fn c_strings_stop_at_the_first_nul() {
        assert_eq!(c_string(b"veth\0\0junk"), "veth");
        assert_eq!(c_string(b"abc"), "abc");
    }
}
