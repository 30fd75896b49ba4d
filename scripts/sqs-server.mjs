// Starts a local SQS-compatible server for tests: node sqs-server.mjs PORT
// Prints "ready" on stdout once it listens; stops on SIGTERM.
import { createSqsServer } from "local-aws-sqs";

const port = Number(process.argv[2] || 9324);
const server = await createSqsServer({
  port,
  hostname: "127.0.0.1",
  region: "us-east-1",
  emulateQueueCreationLifecycle: false,
});
console.log("ready");
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
