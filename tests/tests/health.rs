//! Every binary serves `grpc.health.v1` (Kubernetes `grpc:` probes use it).

use kvtier_integration_tests::*;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn assert_serving(addr: std::net::SocketAddr, services: &[&str]) -> anyhow::Result<()> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    for service in services {
        let reply = health
            .check(HealthCheckRequest {
                service: (*service).into(),
            })
            .await?
            .into_inner();
        assert_eq!(reply.status, 1, "{service:?} on {addr} is not SERVING");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_report_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    assert_serving(server.grpc, &["", "kvtier.v1.CacheService"]).await?;
    let agent = AgentProcess::start(&dir.path().join("agent.log"), server.grpc, &[])?;
    assert_serving(agent.grpc, &["", "kvtier.v1.WorkerService"]).await?;
    Ok(())
}
