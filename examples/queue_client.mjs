// Waiting in line from Node (docs/WAITING_ROOM.md, "From other languages"): joins the
// waiting room with @grpc/grpc-js and prints the first QueueUpdate as JSON.
//
//   npm install @grpc/grpc-js @grpc/proto-loader
//   node examples/queue_client.mjs 127.0.0.1:50052 ACTIVITY_ID USER_ID
//
// The .proto files: protos/ of this repository, and google/api/field_behavior.proto from
// googleapis (PROTO_PATH, ':'-separated, adds folders; the venv's copy is found by default).
import { createRequire } from 'node:module';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');

function includeDirs() {
  const dirs = [join(repo, 'protos'), ...(process.env.PROTO_PATH || '').split(':').filter(Boolean)];
  const lib = join(repo, '.venv', 'lib');
  if (existsSync(lib)) {
    for (const python of readdirSync(lib)) {
      const site = join(lib, python, 'site-packages');
      if (existsSync(join(site, 'google', 'api', 'field_behavior.proto'))) dirs.push(site);
    }
  }
  return dirs;
}

const [address, activityId, userId] = process.argv.slice(2);
const definition = protoLoader.loadSync('seckill/v1/activity.proto', {
  includeDirs: includeDirs(), longs: String, enums: String, defaults: false,
});
const seckill = grpc.loadPackageDefinition(definition).seckill.v1;
const client = new seckill.ActivityService(address, grpc.credentials.createInsecure());

const call = client.JoinQueue({ activityId, userId });
call.on('data', (update) => {
  // The first message: PRE_QUEUED or WAITING (keep reading for ADMITTED and its
  // admissionPass, then call Seckill with it); here we stop after it.
  console.log(JSON.stringify(update));
  call.cancel();
});
call.on('error', (error) => {
  if (error.code !== grpc.status.CANCELLED) {
    // UNAVAILABLE carries RetryInfo: join again after its delay, the place is kept.
    console.error(`${error.code} ${error.details}`);
    process.exitCode = 1;
  }
  client.close();
});
call.on('end', () => client.close());
