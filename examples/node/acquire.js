// Acquires a lease on one Calculator by name from Node.js, then releases it.
//   cd examples/node && npm install --no-audit --no-fund
//   node acquire.js [ADDRESS] [RESOURCE]   (or BROKER_ADDRESS, BROKER_RESOURCE; default 127.0.0.1:50051 calc)
// With auth on, BROKER_TOKEN is sent on every call as `authorization: Bearer <token>`.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.join(__dirname, '..', '..', 'protos');
const address = process.argv[2] || process.env.BROKER_ADDRESS || '127.0.0.1:50051';
const resource = process.argv[3] || process.env.BROKER_RESOURCE || 'calc';
const metadata = new grpc.Metadata();
if (process.env.BROKER_TOKEN) metadata.set('authorization', `Bearer ${process.env.BROKER_TOKEN}`);

const definition = protoLoader.loadSync(path.join(PROTOS, 'broker/v1/lease_service.proto'), {
  includeDirs: [PROTOS],
  enums: String, // LEASE_STATE_RELEASED rather than 2
  longs: String, // int64 fencing tokens, exactly
  defaults: true,
});
const { LeaseService } = grpc.loadPackageDefinition(definition).broker.v1;
const leases = new LeaseService(address, grpc.credentials.createInsecure());

// One unary call as a promise, with a 10 s deadline.
function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 10_000;
    leases[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function main() {
  const { lease, secret } = await call('AcquireLease', {
    requirements: [
      { kind: 'Calculator', constraints: [{ field: 'name', equals: { stringValue: resource } }] },
    ],
    holder: 'node-example',
  });
  const [grant] = lease.grants;
  console.log(`lease ${lease.leaseId} holds ${grant.resource.name}, fencing token ${grant.fencingToken}`);

  const released = await call('ReleaseLease', { leaseId: lease.leaseId, secret });
  console.log(`lease ${released.lease.leaseId} is ${released.lease.state}`);
}

main()
  .catch((error) => {
    const code = grpc.status[error.code] ?? 'ERROR';
    console.error(`${code}: ${error.details ?? error.message}`);
    process.exitCode = 1;
  })
  .finally(() => leases.close());
