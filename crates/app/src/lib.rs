//! joule's application layer: between a command line (or a server's request) and the
//! libraries. It resolves every setting once ([`settings`]), assembles the world a run needs
//! ([`assembly`]: catalog, policy, profiles, backends), and owns the run lifecycle ([`runs`]:
//! plan, run, record, resume, replay) and the profile files runs and measurements write
//! ([`profiles`]). The binary parses arguments and prints; the lab and the server build on
//! this crate; the libraries below it never read the environment.

pub mod assembly;
pub mod devices;
pub mod error;
pub mod options;
pub mod profiles;
pub mod runs;
pub mod settings;

pub use assembly::Assembly;
pub use error::AppError;
pub use options::{EndpointUrl, Planning, RunOptions};
pub use settings::Settings;
