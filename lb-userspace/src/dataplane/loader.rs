//! Loads the data path onto an interface, or adopts the one already there.
//!
//! Maps and links are pinned under `<root>/<ifname>/`. On the first start
//! the maps are created and pinned and the programs attached through
//! `bpf_link`s (XDP, and TCX on egress), which are pinned too: they keep
//! forwarding after the agent exits or is killed. A later start reuses the
//! pinned maps (connection table included) and swaps its freshly loaded
//! programs into the pinned links with `bpf_link_update`, which is atomic:
//! no packet sees the interface without a program.
//!
//! Kernels without TCX (before 6.6, unless backported) get the egress
//! program as a netlink `cls_bpf` filter on a `clsact` qdisc instead, at a
//! fixed priority and handle. Such a filter outlives the agent by itself
//! but has no link to pin, so the attached program is pinned as the record
//! of it; a restart replaces the program in that filter (also atomic) and
//! `cleanup` deletes the filter. Which one a kernel has is found by trying
//! TCX, never from the version number: distributions backport TCX.
//!
//! The egress program is attached before the ingress one: when attaching
//! fails, no XDP link has been pinned, and ingress never rewrites a flow
//! whose replies nobody would translate back.

use std::{
    fs, io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, ProgramArray},
    programs::{
        LinkOrder, ProgramError, ProgramType, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    sys::{BpfHelper, SyscallError, is_helper_supported},
};
use lb_common::{
    BackendValue6, flow,
    maps::{self, programs, tc_slot, xdp_slot},
};
use tracing::{info, warn};

use crate::{dataplane::maps::PinDir, dataplane::object, net::netdev::Interface};

/// Sizes chosen when the maps are first created (pinned maps keep theirs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub maglev_slots: u32,
    pub conntrack: u32,
    pub rev_nat: u32,
    pub affinity: u32,
    /// Entries of the per-CPU traffic counters (ids at or above are not counted);
    /// `memory::stats_entries` picks them from the CPU count.
    pub service_stats: u32,
    pub backend_stats: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            maglev_slots: maps::MAGLEV_SLOTS,
            conntrack: maps::CONNTRACK_MAX,
            rev_nat: maps::REV_NAT_MAX,
            affinity: maps::AFFINITY_MAX,
            service_stats: maps::MAX_SERVICES,
            backend_stats: maps::MAX_BACKENDS,
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode if the driver supports it, else generic.
    #[default]
    Auto,
    /// Driver mode only: fail if the NIC driver has no XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

impl XdpAttachMode {
    fn flags(self) -> XdpMode {
        match self {
            Self::Auto => XdpMode::default(),
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

/// How `lb_egress` is attached to the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressAttachment {
    /// A TCX `bpf_link`, pinned at [`programs::EGRESS_LINK`] (Linux >= 6.6 or a backport).
    Tcx,
    /// A netlink `cls_bpf` filter on the `clsact` qdisc at [`TC_PRIORITY`] and
    /// [`TC_HANDLE`], its program pinned at [`programs::EGRESS_TC_PROG`].
    Netlink,
}

/// Priority of the netlink egress filter. Fixed so that a restart finds the filter to
/// replace without reading anything back; 1 puts it before filters of other tools, which
/// is harmless: `lb_egress` only rewrites replies of its own flows and passes the rest on.
pub const TC_PRIORITY: u16 = 1;
/// Handle of the netlink egress filter ("oh").
pub const TC_HANDLE: u32 = 0x6f68;

/// The loaded programs. Dropping it leaves the pinned links attached.
pub struct Dataplane {
    _ebpf: Ebpf,
    pub pins: PinDir,
    /// True when maps were already pinned (a restart): state was kept.
    pub adopted: bool,
    pub egress: EgressAttachment,
    /// `flow_sweep`, loaded, never attached: the flow sweeper's conditional
    /// delete (`sweep::delete_rev_still_over`).
    pub sweep_prog: OwnedFd,
}

/// Maps that only hold counts the agent may start again: pinned by an
/// earlier version with another kind, flags or size (`arp_stats` was a
/// per-CPU hash of 4,096 entries), they are created anew instead of adopted.
const REBUILT_ON_CHANGE: [&str; 1] = [maps::ARP_STATS];

/// The pinned `backends6` of an earlier version is a hash (of the same key
/// and value sizes) where this one has an array. Its entries are state the
/// agent cannot rebuild: the ids its flows are pinned to. It is set aside
/// under this name (bpffs refuses names with a dot) before the programs
/// are loaded (which creates the new array), its entries copied into the
/// new array before any program that reads it runs, and only then
/// unpinned: an agent that dies midway carries them over on its next start.
const EARLIER_BACKENDS6: &str = "backends6_earlier";

/// Sets an earlier version's `backends6` hash aside (see
/// [`EARLIER_BACKENDS6`]). One set aside already, by a start that did not
/// finish, stays the source: a `backends6` array beside it is that start's,
/// written again from it.
fn set_aside_earlier_backends6(pins: &PinDir) -> Result<()> {
    let (path, aside) = (pins.entry(maps::BACKENDS6), pins.entry(EARLIER_BACKENDS6));
    if aside.exists() || !path.exists() {
        return Ok(());
    }
    let info = MapData::from_pin(&path)
        .and_then(|m| m.info())
        .with_context(|| format!("inspecting pinned map {}", path.display()))?;
    if info.map_type().map_or(u32::MAX, |t| t as u32) != maps::MapKind::Hash as u32 {
        return Ok(());
    }
    fs::rename(&path, &aside).with_context(|| {
        format!(
            "setting the earlier version's hash {} aside as {}",
            path.display(),
            aside.display()
        )
    })?;
    Ok(())
}

/// Copies the entries of an earlier version's `backends6` hash, set aside,
/// into the `backends6` array the load created, then unpins the hash.
fn carry_over_earlier_backends6(pins: &PinDir) -> Result<()> {
    let aside = pins.entry(EARLIER_BACKENDS6);
    if !aside.exists() {
        return Ok(());
    }
    let earlier: HashMap<MapData, u32, BackendValue6> =
        super::maps::open_pinned(&aside, EARLIER_BACKENDS6)?;
    let mut array: Array<MapData, BackendValue6> =
        super::maps::open_pinned(&pins.entry(maps::BACKENDS6), maps::BACKENDS6)?;
    let mut n = 0;
    for item in &earlier {
        let (id, b) = item.with_context(|| format!("reading {}", aside.display()))?;
        array
            .set(id, b, 0)
            .with_context(|| format!("carrying backend {id} over into backends6"))?;
        n += 1;
    }
    fs::remove_file(&aside).with_context(|| format!("unpinning {}", aside.display()))?;
    info!(
        entries = n,
        "carried the IPv6 backends of an earlier version's backends6 hash into this version's array"
    );
    Ok(())
}

/// Refuses to adopt pinned maps whose layout differs from this build's (the
/// map table of lb-common): the programs would read garbage. Only `onehop
/// cleanup` (which drops the connection table) gets past it, and the error
/// says so.
fn check_pinned_layouts(pins: &PinDir) -> Result<()> {
    for spec in maps::TABLE {
        let path = pins.entry(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("inspecting pinned map {}", path.display()))?;
        if REBUILT_ON_CHANGE.contains(&spec.name) {
            let found = (
                info.map_type().map_or(u32::MAX, |t| t as u32),
                info.map_flags(),
                info.max_entries(),
            );
            if found != (spec.kind as u32, spec.flags, spec.max_entries) {
                // The programs still attached keep the old map until they are replaced.
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {} to create it anew", path.display()))?;
                info!(
                    map = spec.name,
                    "the pinned map is of an earlier version's kind or size: created anew (its counts start again)"
                );
                continue;
            }
        }
        let found = (info.key_size(), info.value_size());
        let want = (spec.key_size, spec.value_size);
        if found != want {
            bail!(
                "pinned map {} has key/value sizes {found:?}, this build expects {want:?}; \
                 it was created by an incompatible onehop version. Run `onehop cleanup \
                 --interface {}` (drops the connection table) and start again",
                path.display(),
                pins.path()
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            );
        }
    }
    Ok(())
}

fn is_not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::SyscallError(SyscallError { io_error, .. }) if io_error.kind() == io::ErrorKind::NotFound)
}

/// Reuses the link pinned at `path` by swapping `prog` into it, or, when
/// there is none (or it is stale: the interface was recreated), attaches
/// `prog` afresh and pins the new link. `attach` may decline (`None`: the
/// kernel lacks this kind of link); then nothing is pinned.
fn adopt_or_attach<P>(
    prog: &mut P,
    path: &Path,
    what: &str,
    replace: impl FnOnce(&mut P, FdLink) -> Result<()>,
    attach: impl FnOnce(&mut P) -> Result<Option<FdLink>>,
) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => match replace(prog, FdLink::from(pinned)) {
            Ok(()) => {
                info!(link = %path.display(), "swapped the new {what} program into the pinned link");
                return Ok(());
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "pinned {what} link is unusable, attaching afresh");
                fs::remove_file(path)
                    .with_context(|| format!("removing stale pin {}", path.display()))?;
            }
        },
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("opening the pinned {what} link")),
    }
    let Some(link) = attach(prog)? else {
        return Ok(());
    };
    link.pin(path)
        .with_context(|| format!("pinning the {what} link"))?;
    info!(link = %path.display(), "attached {what}");
    Ok(())
}

/// Mode bits that let someone other than the owner add, remove or rename entries.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Creates `dir` private (0700) if it is missing, and refuses one that another user owns or
/// could write to: whoever can write the directory can delete the pins (detaching the data
/// path when the agent stops) or plant maps the agent would adopt. bpffs is often mounted
/// world-writable (1777), so anyone may pre-create the directory before the agent first runs.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let m = fs::metadata(parent)
            .with_context(|| format!("{} (is bpffs mounted?)", parent.display()))?;
        // Without the sticky bit, anyone who can write the parent can rename our directory away.
        if m.mode() & WRITABLE_BY_OTHERS != 0 && m.mode() & 0o1000 == 0 {
            bail!(
                "refusing to pin under {}: mode {:04o} lets other users replace {} (make it \
                 0755, or 1777 with the sticky bit)",
                parent.display(),
                m.mode() & 0o7777,
                dir.display()
            );
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask can only have taken bits away; say exactly what we mean.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()))?;
            info!(dir = %dir.display(), "created the pin directory (0700)");
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("creating {} (is bpffs mounted?)", dir.display()));
        }
    }
    // Not following a symlink: a link planted there would point the pins elsewhere.
    let m = fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    let mode = m.mode() & 0o7777;
    if !m.is_dir() {
        bail!(
            "refusing the pin directory {}: it is not a directory (a symlink or a file, \
             owner uid {}); remove it and restart",
            dir.display(),
            m.uid()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        bail!(
            "refusing the pin directory {}: owned by uid {} (mode {mode:04o}), not by this \
             agent (uid {me}); another user could delete or replace the pins. Check who \
             created it, remove it (`onehop cleanup` or `rm -r`), and restart",
            dir.display(),
            m.uid()
        );
    }
    if mode & WRITABLE_BY_OTHERS != 0 {
        bail!(
            "refusing the pin directory {}: mode {mode:04o} (owner uid {}) lets other users \
             delete or replace the pins; make it private (`chmod 700`) or remove it, and \
             restart",
            dir.display(),
            m.uid()
        );
    }
    Ok(())
}

/// Loads (or reloads) the programs and attaches them to `iface`.
pub fn attach(
    iface: &Interface,
    root: &Path,
    sizes: Sizes,
    mode: XdpAttachMode,
) -> Result<Dataplane> {
    let pins = PinDir::new(root, &iface.name);
    private_dir(root)?;
    private_dir(pins.path())?;
    let adopted = pins.exists();
    set_aside_earlier_backends6(&pins)?;
    check_pinned_layouts(&pins)?;

    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = maps::TABLE
        .iter()
        .map(|spec| (spec.name, pins.entry(spec.name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .map_max_entries(maps::MAGLEV, sizes.maglev_slots)
        .map_max_entries(maps::CONNTRACK, flow::table::sets_for(sizes.conntrack))
        .map_max_entries(maps::REV_NAT, sizes.rev_nat)
        .map_max_entries(maps::AFFINITY, sizes.affinity)
        .map_max_entries(maps::SERVICE_STATS, sizes.service_stats)
        .map_max_entries(maps::BACKEND_STATS, sizes.backend_stats);
    let mut ebpf = loader
        .load(object::object()?)
        .context("loading the eBPF object")?;
    // Before any program that reads the new array is put where packets
    // reach it (`fill_program_arrays`, the link swap).
    carry_over_earlier_backends6(&pins)?;

    let xdp: &mut Xdp = ebpf
        .program_mut(programs::INGRESS)
        .context("lb_ingress missing from the object")?
        .try_into()?;
    verify(|| xdp.load())
        .map_err(|e| explain_load_error(e, ProgramType::Xdp, INGRESS_HELPERS))
        .context("verifying lb_ingress")?;
    let sweep: &mut Xdp = ebpf
        .program_mut(programs::SWEEP)
        .context("flow_sweep missing from the object")?
        .try_into()?;
    verify(|| sweep.load())
        .map_err(|e| explain_load_error(e, ProgramType::Xdp, &[]))
        .context("verifying flow_sweep")?;
    let sweep_prog = sweep
        .fd()?
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating flow_sweep's fd")?;
    for (name, _) in XDP_TAIL_CALLS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        verify(|| prog.load())
            .map_err(|e| explain_load_error(e, ProgramType::Xdp, INGRESS_HELPERS))
            .with_context(|| format!("verifying {name}"))?;
    }
    let egress6: &mut SchedClassifier = ebpf
        .program_mut(programs::EGRESS6)
        .context("lb_egress6 missing from the object")?
        .try_into()?;
    verify(|| egress6.load())
        .map_err(|e| explain_load_error(e, ProgramType::SchedClassifier, EGRESS_HELPERS))
        .context("verifying lb_egress6")?;
    fill_program_arrays(&mut ebpf)?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(programs::EGRESS)
        .context("lb_egress missing from the object")?
        .try_into()?;
    verify(|| tc.load())
        .map_err(|e| explain_load_error(e, ProgramType::SchedClassifier, EGRESS_HELPERS))
        .context("verifying lb_egress")?;
    let egress = attach_egress(tc, iface, &pins)?;

    let xdp: &mut Xdp = ebpf
        .program_mut(programs::INGRESS)
        .context("lb_ingress missing from the object")?
        .try_into()?;
    adopt_or_attach(
        xdp,
        &pins.entry(programs::INGRESS_LINK),
        "XDP",
        |xdp, fd| {
            let id = xdp.attach_to_link(fd.try_into()?)?;
            // The pin keeps the link attached; our handle can go.
            drop(xdp.take_link(id)?);
            Ok(())
        },
        |xdp| {
            let id = xdp
                .attach_to_if_index(iface.index, mode.flags())
                .with_context(|| format!("attaching XDP to {}", iface.name))?;
            xdp.take_link(id)?
                .try_into()
                .map(Some)
                .context("the kernel attached XDP without a bpf_link (needs Linux >= 5.9)")
        },
    )?;
    Ok(Dataplane {
        _ebpf: ebpf,
        pins,
        adopted,
        egress,
        sweep_prog,
    })
}

/// The XDP programs the ingress path tail-calls, by their slot of
/// `xdp_programs`.
const XDP_TAIL_CALLS: [(&str, u32); 3] = [
    (programs::INGRESS6, xdp_slot::INGRESS6),
    (programs::SERVICE6, xdp_slot::SERVICE6),
    (programs::NAT6, xdp_slot::NAT6),
];

/// Puts the loaded programs that `lb_ingress`, `lb_ingress6` and `lb_egress`
/// tail-call into their slots of `xdp_programs` and `tc_programs`. Before the ingress program is
/// attached or swapped into its link: until its slot is filled, IPv6
/// passes untouched. The array is pinned, so the programs in it keep
/// serving after the agent exits; a restart puts its own in place, one
/// slot update each (atomic for the packets).
pub fn fill_program_arrays(ebpf: &mut Ebpf) -> Result<()> {
    for (name, slot) in XDP_TAIL_CALLS {
        let prog: &Xdp = ebpf
            .program(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        let fd = prog
            .fd()
            .with_context(|| format!("{name} is not loaded"))?
            .try_clone()
            .with_context(|| format!("duplicating {name}'s fd"))?;
        let mut slots: ProgramArray<_> = ebpf
            .map_mut(maps::XDP_PROGRAMS)
            .context("xdp_programs missing from the object")?
            .try_into()?;
        slots
            .set(slot, &fd, 0)
            .with_context(|| format!("putting {name} into xdp_programs"))?;
    }
    // An object without `lb_egress` (the bench object) has nothing that
    // calls into `tc_programs`.
    if ebpf.program(programs::EGRESS).is_none() {
        return Ok(());
    }
    let egress6: &SchedClassifier = ebpf
        .program(programs::EGRESS6)
        .context("lb_egress6 missing from the object")?
        .try_into()?;
    let fd = egress6
        .fd()
        .context("lb_egress6 is not loaded")?
        .try_clone()
        .context("duplicating lb_egress6's fd")?;
    let mut slots: ProgramArray<_> = ebpf
        .map_mut(maps::TC_PROGRAMS)
        .context("tc_programs missing from the object")?
        .try_into()?;
    slots
        .set(tc_slot::EGRESS6, &fd, 0)
        .context("putting lb_egress6 into tc_programs")?;
    Ok(())
}

/// Helpers the programs call, with the release that gave them to the program type: the
/// oldest kernels a distribution might still run lack some.
const INGRESS_HELPERS: &[(BpfHelper, &str, &str)] = &[
    (BpfHelper::BPF_FUNC_fib_lookup, "bpf_fib_lookup", "4.18"),
    (BpfHelper::BPF_FUNC_redirect, "bpf_redirect", "4.14"),
    (BpfHelper::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns", "4.8"),
];
const EGRESS_HELPERS: &[(BpfHelper, &str, &str)] = &[
    (
        BpfHelper::BPF_FUNC_skb_store_bytes,
        "bpf_skb_store_bytes",
        "4.1",
    ),
    (
        BpfHelper::BPF_FUNC_l3_csum_replace,
        "bpf_l3_csum_replace",
        "4.1",
    ),
    (
        BpfHelper::BPF_FUNC_l4_csum_replace,
        "bpf_l4_csum_replace",
        "4.1",
    ),
];

/// Attempts [`verify`] makes before it lets `EAGAIN` through.
const VERIFY_ATTEMPTS: usize = 5;

/// Runs a program's `load`, again when the verifier gave up with `EAGAIN`.
///
/// The verifier abandons a program when a signal is pending on the loading
/// thread (a child exiting under a runtime that handles `SIGCHLD` is enough),
/// and a program as big as `lb_ingress` takes a second or more to verify, so
/// a busy process meets this now and then. libbpf retries such loads; a
/// failed load leaves the program unloaded, so it can be loaded again.
pub fn verify(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < VERIFY_ATTEMPTS =>
            {
                warn!(
                    attempt,
                    "the verifier was interrupted by a signal; loading again"
                );
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Adds to a failed load the helpers this kernel lacks, found by probing each one: the
/// verifier only says `unknown func`, not which kernel release would have it.
fn explain_load_error(
    e: ProgramError,
    kind: ProgramType,
    helpers: &[(BpfHelper, &str, &str)],
) -> anyhow::Error {
    let missing: Vec<String> = helpers
        .iter()
        .filter(|(h, ..)| matches!(is_helper_supported(kind, *h), Ok(false)))
        .map(|(_, name, since)| format!("{name} (Linux >= {since})"))
        .collect();
    let e = anyhow::Error::new(e);
    if missing.is_empty() {
        e
    } else {
        e.context(format!(
            "this kernel lacks the helpers {}",
            missing.join(", ")
        ))
    }
}

fn tc_filter(ifname: &str) -> io::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        ifname,
        TcAttachType::Egress,
        TC_PRIORITY,
        TcHandle::from(TC_HANDLE),
        None,
    )
}

/// Attaches `lb_egress`: into the pinned TCX link or the recorded netlink filter when
/// there is one, else through a new TCX link, else (the kernel has no TCX) through a new
/// netlink filter.
fn attach_egress(
    tc: &mut SchedClassifier,
    iface: &Interface,
    pins: &PinDir,
) -> Result<EgressAttachment> {
    let record = pins.entry(programs::EGRESS_TC_PROG);
    if record.exists() {
        attach_egress_netlink(tc, iface, &record)?;
        return Ok(EgressAttachment::Netlink);
    }
    let mut tcx_error = None;
    adopt_or_attach(
        tc,
        &pins.entry(programs::EGRESS_LINK),
        "TCX egress",
        |tc, fd| {
            let id = tc.attach_to_link(fd.try_into()?)?;
            drop(tc.take_link(id)?);
            Ok(())
        },
        |tc| {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            match tc.attach_with_options(&iface.name, TcAttachType::Egress, options) {
                Ok(id) => Ok(Some(
                    tc.take_link(id)?
                        .try_into()
                        .context("TCX attach gave no bpf_link")?,
                )),
                Err(e) => {
                    tcx_error = Some(e);
                    Ok(None)
                }
            }
        },
    )?;
    let Some(tcx_error) = tcx_error else {
        return Ok(EgressAttachment::Tcx);
    };
    // With its causes: ProgramError's own text names only the syscall.
    let tcx_error = format!("{:#}", anyhow!(tcx_error));
    info!(
        interface = %iface.name,
        error = %tcx_error,
        "TCX is not available; attaching egress as a netlink clsact filter"
    );
    attach_egress_netlink(tc, iface, &record)
        .with_context(|| format!("after TCX failed too ({tcx_error})"))?;
    Ok(EgressAttachment::Netlink)
}

/// Puts `tc` into the netlink filter at [`TC_PRIORITY`]/[`TC_HANDLE`] (replacing the
/// program of an existing one, or creating it) and pins `tc` at `record`.
fn attach_egress_netlink(tc: &mut SchedClassifier, iface: &Interface, record: &Path) -> Result<()> {
    let link = match tc_filter(&iface.name)
        .map_err(TcError::IoError)
        .map_err(ProgramError::from)
        .and_then(|existing| tc.attach_to_link(existing))
    {
        Ok(id) => {
            info!(interface = %iface.name, "swapped the new program into the egress filter");
            tc.take_link(id)?
        }
        Err(replace) => {
            // The filter is gone (first start, or the interface was recreated).
            // `clsact` may already be there, put by us or by another tool.
            let qdisc = tc::qdisc_add_clsact(&iface.name).err();
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TcHandle::from(TC_HANDLE),
                classid: None,
            });
            let id = tc
                .attach_with_options(&iface.name, TcAttachType::Egress, options)
                .map_err(|e| {
                    let e = anyhow!(e).context(format!(
                        "attaching the egress filter to {} (replacing an existing one: {replace})",
                        iface.name
                    ));
                    match qdisc {
                        Some(q) => e.context(format!("adding the clsact qdisc: {q}")),
                        None => e,
                    }
                })?;
            info!(interface = %iface.name, "attached egress as a netlink filter");
            tc.take_link(id)?
        }
    };
    // The filter holds the program by itself; dropping this handle would delete it.
    std::mem::forget(link);
    match fs::remove_file(record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", record.display())),
    }
    tc.pin(record)
        .with_context(|| format!("pinning the egress program at {}", record.display()))?;
    Ok(())
}

/// Removes everything pinned for `ifname`: the links (which detaches the
/// programs once no process holds them) and the maps (state is lost).
pub fn cleanup(root: &Path, ifname: &str) -> Result<bool> {
    let pins = PinDir::new(root, ifname);
    if !pins.path().exists() {
        return Ok(false);
    }
    // A TCX link goes with its pin; a netlink filter stays until deleted.
    if pins.entry(programs::EGRESS_TC_PROG).exists() {
        match tc::qdisc_detach_program(ifname, TcAttachType::Egress, programs::EGRESS) {
            Ok(()) => info!(interface = ifname, "deleted the egress filter"),
            // The filter is gone already.
            Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            // So is the interface, with its filters; or it lives in another network
            // namespace than this process, where nothing can be done from here.
            Err(TcError::IoError(e)) if e.raw_os_error() == Some(libc::ENODEV) => warn!(
                interface = ifname,
                "no such interface in this network namespace: no egress filter to delete"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("deleting the egress filter of {ifname}"));
            }
        }
    }
    fs::remove_dir_all(pins.path())
        .with_context(|| format!("removing {}", pins.path().display()))?;
    // Leave the root directory alone if other interfaces use it.
    let _ = fs::remove_dir(root);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, io};

    use aya::programs::ProgramError;
    use aya_obj::VerifierLog;

    use super::{VERIFY_ATTEMPTS, verify};

    fn failed(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(String::new()),
        }
    }

    /// Loads that fail with `errno` `fails` times, then succeed; returns the
    /// outcome and how many loads ran.
    fn run(errno: i32, fails: usize) -> (Result<(), ProgramError>, usize) {
        let calls = Cell::new(0);
        let outcome = verify(|| {
            calls.set(calls.get() + 1);
            if calls.get() <= fails {
                Err(failed(errno))
            } else {
                Ok(())
            }
        });
        (outcome, calls.get())
    }

    #[test]
    fn an_interrupted_verification_is_run_again() {
        let (outcome, calls) = run(libc::EAGAIN, 2);
        assert!(outcome.is_ok());
        assert_eq!(calls, 3);
    }

    #[test]
    fn interruptions_stop_after_the_last_attempt() {
        let (outcome, calls) = run(libc::EAGAIN, usize::MAX);
        assert_eq!(calls, VERIFY_ATTEMPTS);
        assert!(matches!(
            outcome,
            Err(ProgramError::LoadError { io_error, .. }) if io_error.raw_os_error() == Some(libc::EAGAIN)
        ));
    }

    #[test]
    fn a_rejected_program_is_not_loaded_again() {
        let (outcome, calls) = run(libc::EACCES, usize::MAX);
        assert_eq!(calls, 1);
        assert!(outcome.is_err());
        let (outcome, calls) = run(libc::EACCES, 0);
        assert_eq!((outcome.is_ok(), calls), (true, 1));
    }
}
