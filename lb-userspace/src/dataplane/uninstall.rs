//! Removing the data path for good (`onehop uninstall`).
//!
//! The links are pinned on purpose, so that an agent that stops or is replaced leaves
//! traffic flowing; that same choice means that deleting the agent leaves XDP answering ARP
//! from frozen maps. Uninstalling undoes every attachment the loader can make, for every
//! interface with a pin directory under the root (or one named interface):
//!
//! 1. each pinned link is opened and detached with `BPF_LINK_DETACH`, which takes the program
//!    off the interface at once even if some process still holds the link, then unpinned;
//!    the kernel is asked again and must report the link hooked to no interface;
//! 2. a classic `clsact` egress filter running our egress program is deleted (the fallback
//!    for kernels without TCX attaches it so; harmless when there is none);
//! 3. the maps and the directory are removed, then the root if nothing else is in it.
//!
//! It is idempotent: a second run finds nothing and says so. Run it after the agent is
//! stopped for good: a running agent holds its maps and would attach again when restarted.

use std::{
    ffi::CString,
    fmt, fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TcAttachType, loaded_programs, tc};
use lb_common::maps::programs;

/// `BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD` and `BPF_LINK_DETACH` from `enum bpf_cmd`
/// (uapi/linux/bpf.h; the numbers are ABI). None of them needs `CAP_SYS_ADMIN`, which the
/// uninstall pod does not get.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_TCX_INGRESS` and `BPF_TCX_EGRESS` of `enum bpf_attach_type`.
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `BPF_LINK_TYPE_XDP` and `BPF_LINK_TYPE_TCX` of `enum bpf_link_type`.
const LINK_TYPE_XDP: u32 = 6;
const LINK_TYPE_TCX: u32 = 11;

/// What the kernel says about one link (the head of `struct bpf_link_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub id: u32,
    pub kind: u32,
    pub prog_id: u32,
    /// The interface an XDP or TCX link is attached to; 0 once detached.
    pub ifindex: u32,
}

impl LinkFacts {
    fn kind_name(self) -> &'static str {
        match self.kind {
            LINK_TYPE_XDP => "XDP",
            LINK_TYPE_TCX => "TCX",
            _ => "bpf",
        }
    }
}

/// One link taken off an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedLink {
    pub pin: String,
    pub link: LinkFacts,
    /// The attached program's name, when the kernel still knew it.
    pub program: Option<String>,
}

/// What was removed for one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub interface: String,
    pub links: Vec<DetachedLink>,
    /// `clsact` egress filters running our egress program that were deleted.
    pub tc_filters: bool,
    /// The interface is not in this network namespace (already gone, or renamed).
    pub interface_missing: bool,
    /// Map pins (and any other files) removed with the directory.
    pub files: Vec<String>,
    pub dir: PathBuf,
    /// Solicited-node multicast groups of announced IPv6 VIPs the interface
    /// was left to receive, which it no longer does.
    pub multicast_left: usize,
    /// Why some of them could not be left (the rest of the cleanup is done
    /// regardless: they only make the NIC accept a few multicast frames).
    pub multicast_problem: Option<String>,
}

/// What one run did, for every interface it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub root: PathBuf,
    pub interfaces: Vec<Removed>,
    /// The root itself was removed (nothing else was in it).
    pub root_removed: bool,
}

impl Report {
    /// Nothing was there to remove.
    pub fn nothing(&self) -> bool {
        self.interfaces.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nothing() {
            return writeln!(
                f,
                "nothing to uninstall: no onehop pin directory under {}",
                self.root.display()
            );
        }
        for r in &self.interfaces {
            let missing = if r.interface_missing {
                " (interface not present)"
            } else {
                ""
            };
            writeln!(f, "{}{missing}:", r.interface)?;
            for l in &r.links {
                let program = l
                    .program
                    .as_deref()
                    .map_or_else(String::new, |p| format!(" (program {p})"));
                writeln!(
                    f,
                    "  detached {} link {}{program} from ifindex {} [{}]",
                    l.link.kind_name(),
                    l.link.id,
                    l.link.ifindex,
                    l.pin
                )?;
            }
            if r.links.is_empty() {
                writeln!(f, "  no pinned link")?;
            }
            if r.tc_filters {
                writeln!(
                    f,
                    "  deleted the clsact egress filter running {}",
                    programs::EGRESS
                )?;
            }
            if r.multicast_left > 0 {
                writeln!(
                    f,
                    "  left {} solicited-node multicast groups of IPv6 VIPs",
                    r.multicast_left
                )?;
            }
            if let Some(p) = &r.multicast_problem {
                writeln!(
                    f,
                    "  could not leave every solicited-node multicast group: {p}"
                )?;
            }
            writeln!(
                f,
                "  removed {} pinned files and {}",
                r.files.len(),
                r.dir.display()
            )?;
        }
        if self.root_removed {
            writeln!(f, "removed {}", self.root.display())?;
        }
        writeln!(
            f,
            "onehop uninstalled: no program of ours attached, nothing pinned for {}",
            self.interfaces
                .iter()
                .map(|r| r.interface.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u64], what: &str) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable, zero-initialised `union bpf_attr` prefix of the
    // size given; the kernel checks the size and reads/writes only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: &OwnedFd) -> u64 {
    u64::from(fd.as_raw_fd().unsigned_abs())
}

/// Opens the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))?;
    // { pathname: u64, bpf_fd: u32, file_flags: u32 }
    let mut attr = [c.as_ptr() as u64, 0];
    owned(bpf(BPF_OBJ_GET, &mut attr, "BPF_OBJ_GET")?)
}

/// `struct bpf_link_info`: `type`, `id`, `prog_id`, then (8-aligned) the per-type union whose
/// XDP and TCX members both start with the ifindex.
fn link_facts(fd: &OwnedFd) -> io::Result<LinkFacts> {
    let mut info = [0u32; 16];
    // { bpf_fd: u32, info_len: u32, info: u64 }
    let len = u64::try_from(std::mem::size_of_val(&info)).unwrap_or(64);
    let mut attr = [fd_u32(fd) | (len << 32), info.as_mut_ptr() as u64];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, "BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(LinkFacts {
        kind: info[0],
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

/// Takes the link's program off its hook now, whoever else holds the link.
fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    let mut attr = [fd_u32(fd)];
    bpf(BPF_LINK_DETACH, &mut attr, "BPF_LINK_DETACH").map(drop)
}

/// The ids of the programs attached through TCX to interface `ifindex` (of this network
/// namespace), egress or ingress, in the order they run.
pub fn tcx_programs(ifindex: u32, egress: bool) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let attach = if egress {
        BPF_TCX_EGRESS
    } else {
        BPF_TCX_INGRESS
    };
    // { target_ifindex: u32, attach_type: u32, query_flags: u32, attach_flags: u32,
    //   prog_ids: u64, prog_cnt: u32, _: u32, prog_attach_flags, link_ids,
    //   link_attach_flags, revision: u64 }
    let count = u64::try_from(ids.len()).unwrap_or(0);
    let mut attr = [
        u64::from(ifindex) | (u64::from(attach) << 32),
        0,
        ids.as_mut_ptr() as u64,
        count,
        0,
        0,
        0,
        0,
    ];
    bpf(BPF_PROG_QUERY, &mut attr, "BPF_PROG_QUERY")?;
    let n = usize::try_from(attr[3] & 0xffff_ffff).unwrap_or(usize::MAX);
    Ok(ids.get(..n).unwrap_or(&ids).to_vec())
}

/// The program's name, where this process may enumerate programs (it needs `CAP_SYS_ADMIN`).
fn program_name(id: u32) -> Option<String> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

/// Detaches and unpins the link pinned at `path` (`None`: nothing pinned there).
fn remove_link(path: &Path) -> Result<Option<DetachedLink>> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let link = link_facts(&fd).with_context(|| format!("inspecting {}", path.display()))?;
    let program = program_name(link.prog_id);
    match link_detach(&fd) {
        Ok(()) => {}
        // ENOLINK: the interface went away and took the attachment with it.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e).with_context(|| format!("detaching {}", path.display())),
    }
    // The kernel's own word that the hook no longer runs it: a detached XDP or TCX link
    // reports no interface.
    let after = link_facts(&fd).with_context(|| format!("re-reading {}", path.display()))?;
    if after.ifindex != 0 {
        bail!(
            "{} link {} is still attached to ifindex {} after BPF_LINK_DETACH",
            link.kind_name(),
            link.id,
            after.ifindex
        );
    }
    fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
    Ok(Some(DetachedLink {
        pin: path.display().to_string(),
        link,
        program,
    }))
}

/// Deletes the `clsact` egress filters on `ifname` that run our egress program. `Ok(false)`
/// when there is none, no `clsact` qdisc, or no such interface here.
pub fn remove_clsact_egress(ifname: &str) -> Result<bool> {
    match tc::qdisc_detach_program(ifname, TcAttachType::Egress, programs::EGRESS) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ) || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(false)
        }
        // No clsact qdisc on the interface: the kernel rejects the filter dump.
        Err(tc::TcError::NetlinkError(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "deleting the clsact egress filter {} on {ifname}",
                programs::EGRESS
            )
        }),
    }
}

fn ifindex(ifname: &str) -> Option<u32> {
    let c = CString::new(ifname).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

fn interface_exists(ifname: &str) -> bool {
    ifindex(ifname).is_some()
}

/// The interface's own TCX list must no longer hold a program whose link was detached.
/// Nothing to check without a TCX link: on kernels without TCX (before 6.6) the query
/// itself fails (`EINVAL`), and egress was a netlink filter, removed on its own.
fn verify_tcx(ifname: &str, links: &[DetachedLink]) -> Result<()> {
    if !links.iter().any(|l| l.link.kind == LINK_TYPE_TCX) {
        return Ok(());
    }
    let Some(index) = ifindex(ifname) else {
        return Ok(());
    };
    let attached = tcx_programs(index, true)
        .with_context(|| format!("listing the TCX egress programs of {ifname}"))?;
    for l in links.iter().filter(|l| l.link.kind == LINK_TYPE_TCX) {
        if attached.contains(&l.link.prog_id) {
            bail!(
                "program {} is still attached to {ifname} (TCX egress) after the detach",
                l.link.prog_id
            );
        }
    }
    Ok(())
}

/// Everything onehop left for `ifname` under `root`; `Ok(None)` when it has no directory.
pub fn uninstall_interface(root: &Path, ifname: &str) -> Result<Option<Removed>> {
    let dir = root.join(ifname);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory; onehop never creates one so: look at it and remove it by hand",
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
    }
    let mut out = Removed {
        interface: ifname.to_owned(),
        interface_missing: !interface_exists(ifname),
        dir: dir.clone(),
        ..Removed::default()
    };
    // Links first: once they are gone no packet sees the programs, so removing the maps
    // after them never leaves a program reading a half-removed state.
    for name in [programs::INGRESS_LINK, programs::EGRESS_LINK] {
        if let Some(l) = remove_link(&dir.join(name))? {
            out.links.push(l);
        }
    }
    if !out.interface_missing {
        out.tc_filters = remove_clsact_egress(ifname)?;
        verify_tcx(ifname, &out.links)?;
        leave_multicast(ifname, &mut out);
    }
    let mut files: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    out.files = files;
    Ok(Some(out))
}

/// Leaves the solicited-node groups the agent joined on `ifname`: they
/// outlive it (a restarted agent takes them over), and with the data path
/// gone nothing answers for them. Best effort, recorded in `out`.
fn leave_multicast(ifname: &str, out: &mut Removed) {
    let result = crate::net::ndp::joined(ifname).and_then(|joined| {
        let failed = crate::net::ndp::reconcile(ifname, &std::collections::BTreeSet::new())?;
        Ok((joined.len(), failed))
    });
    match result {
        Ok((n, failed)) => {
            out.multicast_left = n.saturating_sub(failed.len());
            if !failed.is_empty() {
                out.multicast_problem = Some(failed.join("; "));
            }
        }
        Err(e) => out.multicast_problem = Some(format!("{e:#}")),
    }
}

/// The interfaces with a pin directory under `root`, sorted.
pub fn pinned_interfaces(root: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("listing {}", root.display()))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Uninstalls `only` (one interface) or every interface pinned under `root`, then removes
/// `root` if it is left empty.
pub fn uninstall(root: &Path, only: Option<&str>) -> Result<Report> {
    let names = match only {
        Some(name) => vec![name.to_owned()],
        None => pinned_interfaces(root)?,
    };
    let mut report = Report {
        root: root.to_owned(),
        ..Report::default()
    };
    for name in names {
        if let Some(r) = uninstall_interface(root, &name)
            .with_context(|| format!("uninstalling onehop from {name}"))?
        {
            report.interfaces.push(r);
        }
    }
    // Only an empty root goes: another interface's pins (with `--interface`) or files
    // someone put there stay.
    report.root_removed = root.exists() && fs::remove_dir(root).is_ok();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_under_a_missing_root_is_reported_as_such() {
        let root = std::env::temp_dir().join(format!("onehop-uninstall-{}", std::process::id()));
        let r = uninstall(&root, None).expect("missing root is fine");
        assert!(r.nothing());
        assert!(!r.root_removed);
        assert!(r.to_string().starts_with("nothing to uninstall"), "{r}");
    }

    #[test]
    fn a_file_where_the_pin_directory_should_be_is_refused() {
        let root = std::env::temp_dir().join(format!("onehop-uninstall-f-{}", std::process::id()));
        fs::create_dir_all(&root).expect("mkdir");
        fs::write(root.join("eth9"), b"x").expect("write");
        let e = uninstall_interface(&root, "eth9").expect_err("a file is not a pin dir");
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        assert_eq!(
            pinned_interfaces(&root).expect("list"),
            Vec::<String>::new()
        );
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
