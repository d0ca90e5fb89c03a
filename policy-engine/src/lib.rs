#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod action;
#[cfg(all(feature = "agent", target_os = "linux"))]
pub mod agent;
pub mod budget;
pub mod condition;
pub mod engine;
pub mod event;
#[cfg(feature = "executor")]
pub mod executor;
pub mod policy;
pub mod protocol;
pub mod severity;
#[cfg(feature = "signing")]
pub mod signing;
#[cfg(feature = "sshd")]
pub mod sshd;
#[cfg(feature = "sync")]
pub mod sync;

pub use action::{Action, ActionRecord};
pub use condition::{Condition, ConditionError};
pub use engine::{Diagnostic, Engine, EngineConfig, EngineStats, Evaluation};
pub use event::ThreatEvent;
pub use policy::{
    AlertThreshold, AutoRespond, BlockIp, CustomRule, DEFAULT_ORG, Policy, PolicyDuration,
    PolicyError, PolicyVersion, ResponseAction, Rule, RuleKind, RuleMode, Scope, ValidationError,
};
pub use severity::Severity;
