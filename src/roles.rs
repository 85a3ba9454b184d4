//! The services switchboard runs. Each role is one file; roles never import each other.

pub mod chat;
pub mod discard;
pub mod echo;
pub mod hello;
pub mod http;
pub mod proxy;
pub mod upper;
