//! Adapters: the kernel, the database and the filesystem, behind types of their own and
//! of `core`. They never import a service.

pub mod audit_netlink;
pub mod bpf;
pub mod cgroup;
pub mod condition;
pub mod etcd;
pub mod git;
pub mod harden;
pub mod landlock;
pub mod mappings;
pub mod notify;
pub mod pty;
pub mod snapshot;
pub mod spawn;
pub mod store;
