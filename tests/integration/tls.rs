//! `--tls-cert`/`--tls-key`: the same port serves wss:// and https://, to a
//! client that trusts a test CA made here.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::support::{ServerProcess, connect_wss, make_pki, sqlite_url, temp_dir, tls_connector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_https_to_a_client_trusting_the_ca() {
    let dir = temp_dir();
    let pki = make_pki();
    let flags = pki.server_flags(dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &flags).await;
    let connector = tls_connector(pki.ca.clone());
    let name = ServerName::try_from("localhost").unwrap();

    // https://
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/healthz")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);

    // wss://: two clients sync through the TLS port.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = connect_wss(server.addr, &pki, "/secure-room").await;
        // The server greets a connection once it has joined its room: wait
        // for that, or an update sent now could beat the other's join.
        let greeting = tokio::time::timeout(crate::support::TIMEOUT, ws.next())
            .await
            .expect("greeting in time")
            .expect("stream open")
            .expect("greeting");
        assert_eq!(&greeting.into_data()[..2], &[0, 0], "SyncStep1 first");
        clients.push(ws);
    }
    let update = {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "over TLS");
        txn.encode_update_v1()
    };
    let frame = yrs::updates::encoder::Encode::encode_v1(&yrs::sync::Message::Sync(
        yrs::sync::SyncMessage::Update(update.clone()),
    ));
    clients[0]
        .send(tokio_tungstenite::tungstenite::Message::binary(
            frame.clone(),
        ))
        .await
        .unwrap();
    let receiver = &mut clients[1];
    let received = tokio::time::timeout(crate::support::TIMEOUT, async {
        while let Some(Ok(message)) = receiver.next().await {
            if message.into_data().as_ref() == frame.as_slice() {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(received, "the update crossed the TLS port");

    // A plain-text client is not served.
    let plain = tokio_tungstenite::connect_async(server.url("secure-room")).await;
    assert!(plain.is_err());
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}
