//! Services: the domains, each owning its state, above the adapters they drive. A new
//! domain is a new folder here.

pub mod agent;
pub mod approvals;
pub mod audit;
pub mod baseline;
pub mod budget;
pub mod coordination;
pub mod events;
pub mod gating;
pub mod meter;
pub mod policy;
pub mod resolver;
pub mod session;
pub mod tokens;
pub mod workspaces;
