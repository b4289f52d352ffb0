//! The bottom layer: identifiers, clocks, errors and process facts that every other room
//! uses. It imports nothing of this crate, so anything may import it.

pub mod caller;
pub mod clock;
pub mod error;
pub mod file_key;
pub mod process;
pub mod token;

pub use caller::{Asker, Caller};
pub use clock::{boot_id, boot_time_ns, now_unix_ms};
pub use error::{Fault, error_chain};
pub use file_key::{FileKey, FileKeys, KeyError};
