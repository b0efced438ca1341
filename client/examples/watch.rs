//! Watch namespaces and print every event: the quickest way to see Herald work.
//!
//! ```text
//! cargo run -p herald-client --example watch -- ws://127.0.0.1:8080/v1/connect "$HERALD_DEV_TOKEN" 7 9:41
//! ```
//! Arguments: URL, token, then namespaces as `ns` or `ns:cursor`.

use herald_client::{Client, ClientConfig, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token)) = (args.next(), args.next()) else {
        eprintln!("usage: watch URL TOKEN NS[:CURSOR]...");
        std::process::exit(2);
    };
    let pairs: Vec<(u64, u64)> = args
        .map(|a| {
            let (ns, cursor) = a.split_once(':').unwrap_or((&a, "0"));
            match (ns.parse(), cursor.parse()) {
                (Ok(ns), Ok(cursor)) => (ns, cursor),
                _ => {
                    eprintln!("not a namespace: {a:?} (use NS or NS:CURSOR)");
                    std::process::exit(2);
                }
            }
        })
        .collect();
    let (client, mut events) = Client::spawn(ClientConfig::new(url, token));
    client.subscribe(&pairs);
    while let Some(event) = events.recv().await {
        println!("{event:?}");
        if matches!(event, Event::Fatal { .. }) {
            break;
        }
    }
}
