//! Rush's kernel programs and the types they share with userspace.
//!
//! The C sources live in `src/bpf/` (CO-RE, one file per hook family, shared maps and
//! structs in `rush.h`); `build.rs` compiles each into an object and a libbpf-rs skeleton:
//!
//! - [`net`]: `cgroup/connect4|6`, `cgroup/sendmsg4|6` — network confinement.
//! - [`file`]: `lsm/file_open`, `lsm/file_permission` — loads only where the kernel accepts
//!   BPF LSM programs; kept apart so its failure cannot stop the network programs.
//!
//! Both objects define the same maps with `LIBBPF_PIN_BY_NAME`; with their pin paths set to
//! one directory, whichever loads second reuses the first one's maps.
//!
//! The `#[repr(C)]` mirrors below are checked against the objects' BTF by the tests.

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, unused)]
pub mod net {
    include!(concat!(env!("OUT_DIR"), "/net.skel.rs"));
}

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, unused)]
pub mod file {
    include!(concat!(env!("OUT_DIR"), "/file.skel.rs"));
}

/// The compiled objects, e.g. for `bpftool` or a BTF check.
pub const NET_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/net.bpf.o"));
pub const FILE_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file.bpf.o"));

// Values of `RushAgent::net_mode`.
pub const NET_MODE_DENY: u32 = 0;
pub const NET_MODE_ALLOW: u32 = 1;
pub const NET_MODE_LIST: u32 = 2;

// Values of `RushNetEvent::hook`.
pub const HOOK_CONNECT4: u32 = 1;
pub const HOOK_CONNECT6: u32 = 2;
pub const HOOK_SENDMSG4: u32 = 3;
pub const HOOK_SENDMSG6: u32 = 4;

// Values of `RushNetEvent::kind`.
pub const EVENT_NET_DENY: u32 = 1;

// `RushNetKey::family` / `RushNetEvent::family` (Linux AF_*).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Index of the lost-events counter in the `rush_stats` array.
pub const STAT_EVENTS_LOST: u32 = 0;

// Map names; each map is pinned under the daemon's pin directory by this name.
pub const MAP_AGENTS: &str = "rush_agents";
pub const MAP_NET_ALLOW: &str = "rush_net_allow";
pub const MAP_EVENTS: &str = "rush_events";
pub const MAP_STATS: &str = "rush_stats";
pub const PINNED_MAPS: [&str; 4] = [MAP_AGENTS, MAP_NET_ALLOW, MAP_EVENTS, MAP_STATS];

/// Name of the `.rodata` variable holding the agent cgroup depth.
pub const RODATA_AGENT_CGROUP_LEVEL: &str = "agent_cgroup_level";

/// A program: its name in the object, its section (= hook), and the bpffs name its link
/// is pinned under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub hook: &'static str,
    pub link_pin: &'static str,
}

pub const NET_PROGRAMS: [ProgramSpec; 4] = [
    ProgramSpec { name: "rush_connect4", hook: "cgroup/connect4", link_pin: "rush_link_connect4" },
    ProgramSpec { name: "rush_connect6", hook: "cgroup/connect6", link_pin: "rush_link_connect6" },
    ProgramSpec { name: "rush_sendmsg4", hook: "cgroup/sendmsg4", link_pin: "rush_link_sendmsg4" },
    ProgramSpec { name: "rush_sendmsg6", hook: "cgroup/sendmsg6", link_pin: "rush_link_sendmsg6" },
];

pub const LSM_PROGRAMS: [ProgramSpec; 2] = [
    ProgramSpec { name: "rush_file_open", hook: "lsm/file_open", link_pin: "rush_link_file_open" },
    ProgramSpec {
        name: "rush_file_permission",
        hook: "lsm/file_permission",
        link_pin: "rush_link_file_permission",
    },
];

/// Value of `rush_agents` (key: the agent's cgroup id, u64). C: `struct rush_agent`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushAgent {
    pub net_mode: u32,
    pub flags: u32,
    pub reserved: u64,
}

/// Key of `rush_net_allow` (value: u8, 1). C: `struct rush_net_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RushNetKey {
    pub cgroup_id: u64,
    pub family: u16,
    /// Host order; 0 = any port.
    pub port: u16,
    pub pad: u32,
    /// Network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

/// A record of the `rush_events` ring buffer. C: `struct rush_net_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushNetEvent {
    pub kind: u32,
    pub hook: u32,
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    pub uid: u32,
    pub protocol: u32,
    pub family: u16,
    /// Host order.
    pub port: u16,
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub pad: u32,
}

/// Plain old data shared with the kernel: viewable as bytes and readable from bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and integer arrays with no
/// implicit padding (every byte belongs to a field), so every byte is initialized and
/// every bit pattern is a valid value.
pub unsafe trait Plain: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self: Plain` has no padding, so all size_of::<Self>() bytes are
        // initialized; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// Reads a value from the front of `bytes`; `None` if `bytes` is too short.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked; `read_unaligned` copes with any alignment, and
        // any bit pattern is a valid `Self: Plain`.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

// SAFETY: repr(C), integer fields only; no padding (asserted below).
unsafe impl Plain for RushAgent {}
// SAFETY: as above.
unsafe impl Plain for RushNetKey {}
// SAFETY: as above.
unsafe impl Plain for RushNetEvent {}

// No implicit padding: the fields add up to the whole struct.
const _: () = assert!(size_of::<RushAgent>() == 4 + 4 + 8);
const _: () = assert!(size_of::<RushNetKey>() == 8 + 2 + 2 + 4 + 16);
const _: () = assert!(size_of::<RushNetEvent>() == 4 + 4 + 8 + 4 * 4 + 2 + 2 + 16 + 16 + 4);

impl RushNetEvent {
    /// The task's comm up to its first NUL.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::btf::types::{Array, Int, MemberAttr, Struct};
    use libbpf_rs::btf::{Btf, BtfKind, BtfType, HasSize};

    /// (field name, byte offset, byte size) of every field of a Rust struct, in order.
    macro_rules! rust_fields {
        ($ty:ty { $($field:ident),* $(,)? }) => {{
            fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize { size_of::<F>() }
            vec![$((
                stringify!($field),
                std::mem::offset_of!($ty, $field),
                size_of_field(|s: &$ty| &s.$field),
            )),*]
        }};
    }

    fn btf_size(ty: BtfType<'_>) -> usize {
        let ty = ty.skip_mods_and_typedefs();
        match ty.kind() {
            BtfKind::Int => Int::try_from(ty).unwrap().size(),
            BtfKind::Struct => Struct::try_from(ty).unwrap().size(),
            BtfKind::Array => {
                let a = Array::try_from(ty).unwrap();
                a.capacity() * btf_size(a.contained_type())
            }
            k => panic!("unexpected member type kind {k:?}"),
        }
    }

    /// (field name, byte offset, byte size) of every member of the C struct `c_name`, and
    /// its size, from the object's BTF.
    fn c_layout(object: &[u8], c_name: &str) -> (Vec<(String, usize, usize)>, usize) {
        let btf = Btf::from_raw("rush", object).expect("parse object BTF").expect("object has BTF");
        let s: Struct<'_> =
            btf.type_by_name(c_name).unwrap_or_else(|| panic!("struct {c_name} not in the object's BTF"));
        let members = s
            .iter()
            .map(|m| {
                let MemberAttr::Normal { offset } = m.attr else {
                    panic!("{c_name}: bitfield member {:?}", m.name)
                };
                assert_eq!(offset % 8, 0);
                let ty = btf.type_by_id::<BtfType<'_>>(m.ty).unwrap();
                let name = m.name.expect("named member").to_string_lossy().into_owned();
                (name, offset as usize / 8, btf_size(ty))
            })
            .collect();
        (members, s.size())
    }

    /// Where the Rust struct differs from the C struct of the same layout: size, or any
    /// field's name, order, offset or size.
    fn layout_mismatch(
        object: &[u8],
        c_name: &str,
        rust_size: usize,
        rust: &[(&str, usize, usize)],
    ) -> Option<String> {
        let (c, c_size) = c_layout(object, c_name);
        let rust: Vec<(String, usize, usize)> = rust.iter().map(|&(n, o, s)| (n.to_string(), o, s)).collect();
        (c != rust || c_size != rust_size).then(|| {
            format!(
                "struct {c_name}: C size {c_size} (name, offset, size) {c:?}\n\
                 Rust size {rust_size} {rust:?}"
            )
        })
    }

    fn check_layout(object: &[u8], c_name: &str, rust_size: usize, rust: &[(&str, usize, usize)]) {
        if let Some(mismatch) = layout_mismatch(object, c_name, rust_size, rust) {
            panic!("{mismatch}");
        }
    }

    #[test]
    fn layouts_match_btf() {
        for object in [NET_OBJECT, FILE_OBJECT] {
            check_layout(
                object,
                "rush_agent",
                size_of::<RushAgent>(),
                &rust_fields!(RushAgent { net_mode, flags, reserved }),
            );
            check_layout(
                object,
                "rush_net_key",
                size_of::<RushNetKey>(),
                &rust_fields!(RushNetKey { cgroup_id, family, port, pad, addr }),
            );
            check_layout(
                object,
                "rush_net_event",
                size_of::<RushNetEvent>(),
                &rust_fields!(RushNetEvent {
                    kind,
                    hook,
                    cgroup_id,
                    pid,
                    tgid,
                    uid,
                    protocol,
                    family,
                    port,
                    addr,
                    comm,
                    pad
                }),
            );
        }
    }

    #[test]
    fn layout_check_can_fail() {
        let wrong = rust_fields!(RushAgent { flags, net_mode, reserved });
        let mismatch = layout_mismatch(NET_OBJECT, "rush_agent", size_of::<RushAgent>(), &wrong);
        assert!(mismatch.is_some(), "swapped fields must not pass");
        let right = rust_fields!(RushAgent { net_mode, flags, reserved });
        let mismatch = layout_mismatch(NET_OBJECT, "rush_agent", 24, &right);
        assert!(mismatch.is_some(), "a wrong size must not pass");
    }

    /// The `#define RUSH_*` values in rush.h equal the Rust constants.
    #[test]
    fn constants_match_header() {
        let header = include_str!("bpf/rush.h");
        let define = |name: &str| -> u64 {
            header
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("#define") && w.next() == Some(name))
                        .then(|| w.next().unwrap().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("#define {name} not in rush.h"))
        };
        let expected: [(&str, u64); 11] = [
            ("RUSH_NET_MODE_DENY", NET_MODE_DENY.into()),
            ("RUSH_NET_MODE_ALLOW", NET_MODE_ALLOW.into()),
            ("RUSH_NET_MODE_LIST", NET_MODE_LIST.into()),
            ("RUSH_HOOK_CONNECT4", HOOK_CONNECT4.into()),
            ("RUSH_HOOK_CONNECT6", HOOK_CONNECT6.into()),
            ("RUSH_HOOK_SENDMSG4", HOOK_SENDMSG4.into()),
            ("RUSH_HOOK_SENDMSG6", HOOK_SENDMSG6.into()),
            ("RUSH_EVENT_NET_DENY", EVENT_NET_DENY.into()),
            ("RUSH_AF_INET", AF_INET.into()),
            ("RUSH_AF_INET6", AF_INET6.into()),
            ("RUSH_STAT_EVENTS_LOST", STAT_EVENTS_LOST.into()),
        ];
        for (name, value) in expected {
            assert_eq!(define(name), value, "{name}");
        }
    }

    /// Program and map names in the objects are the ones the loader looks for.
    #[test]
    fn names_match_objects() {
        let open = libbpf_rs::ObjectBuilder::default().open_memory(NET_OBJECT).unwrap();
        let progs: Vec<(String, String)> = open
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
            .collect();
        let expected: Vec<(String, String)> =
            NET_PROGRAMS.iter().map(|p| (p.name.to_string(), p.hook.to_string())).collect();
        assert_eq!(progs, expected);
        let maps: Vec<String> = open
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .filter(|n| !n.contains('.'))
            .collect();
        assert_eq!(maps, PINNED_MAPS);

        let open = libbpf_rs::ObjectBuilder::default().open_memory(FILE_OBJECT).unwrap();
        let progs: Vec<(String, String)> = open
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
            .collect();
        let expected: Vec<(String, String)> =
            LSM_PROGRAMS.iter().map(|p| (p.name.to_string(), p.hook.to_string())).collect();
        assert_eq!(progs, expected);
    }

    #[test]
    fn plain_round_trip() {
        let e = RushNetEvent { port: 443, comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0", ..Default::default() };
        let back = RushNetEvent::from_bytes(e.as_bytes()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.comm(), "curl");
        assert!(RushNetEvent::from_bytes(&[0; 8]).is_none());
    }
}
