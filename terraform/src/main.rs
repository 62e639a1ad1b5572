//! Entry point: Terraform starts this binary and talks to it over gRPC (see `plugin`).

use std::process::ExitCode;

fn main() -> ExitCode {
    if !terraform_provider_keylime::plugin::started_by_terraform() {
        eprintln!(
            "terraform-provider-keylime is a Terraform plugin: Terraform starts it (see the README section \"Terraform\"); it does nothing when run by hand"
        );
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terraform-provider-keylime: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(terraform_provider_keylime::plugin::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-keylime: {e:#}");
            ExitCode::from(1)
        }
    }
}
