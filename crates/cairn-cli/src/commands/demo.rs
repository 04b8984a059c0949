//! `cairn demo`: the durable demo workflow.

use std::io::Write;

use super::Ctx;
use crate::cli::DemoArgs;
use crate::error::{CliError, Result};

/// Runs `cairn demo`.
pub async fn run(_ctx: &Ctx, _args: &DemoArgs, _out: &mut dyn Write) -> Result<()> {
    Err(CliError::Demo("not available yet".into()))
}
