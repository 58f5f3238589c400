//! `kvtier-token`: make tokens and the hashed lines of a token file.
//!
//! - `kvtier-token new <principal> [tenant=<t>] [admin] <grant>...` prints a
//!   fresh random token on stderr's first line and the token-file line on stdout.
//! - `kvtier-token hash` reads a token from stdin and prints `sha256:<hex>`.

use std::io::Read;

use anyhow::{bail, Context};
use ring::rand::{SecureRandom, SystemRandom};

use kvtier_security::token_digest_line;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hash") => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .context("read the token from stdin")?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", token_digest_line(token));
        }
        Some("new") => {
            let Some(principal) = args.get(1) else {
                bail!("usage: kvtier-token new <principal> [tenant=<t>] [admin] <grant>...");
            };
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| anyhow::anyhow!("no system randomness"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let line = format!(
                "{principal} {} {}",
                token_digest_line(&token),
                args[2..].join(" ")
            );
            // Check the line parses before handing it out.
            kvtier_security::TokenTable::parse(&line)?;
            eprintln!("token (give it to the client; it is not stored): {token}");
            println!("{}", line.trim_end());
        }
        _ => bail!(
            "usage: kvtier-token new <principal> [tenant=<t>] [admin] <grant>...\n       \
             kvtier-token hash < token"
        ),
    }
    Ok(())
}
