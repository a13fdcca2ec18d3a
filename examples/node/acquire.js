// Acquires a lease on one Calculator by name from Node.js, then releases it.
//   cd examples/node && npm install --no-audit --no-fund
//   node acquire.js [ADDRESS] [RESOURCE]   (or BROKER_ADDRESS, BROKER_RESOURCE; default 127.0.0.1:50051 calc)
// With auth on, BROKER_TOKEN is sent on every call as `authorization: Bearer <token>`.
// BROKER_CA_FILE turns TLS on, checking the broker's certificate against that CA;
// BROKER_CERT_FILE and BROKER_KEY_FILE add a client certificate (mutual TLS).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.join(__dirname, '..', '..', 'protos');
const address = process.argv[2] || process.env.BROKER_ADDRESS || '127.0.0.1:50051';
const resource = process.argv[3] || process.env.BROKER_RESOURCE || 'calc';
const token = process.env.BROKER_TOKEN;
const metadata = new grpc.Metadata();

// TLS with a CA file: the token goes as call credentials. Plain TCP (a broker
// on loopback): the token goes as plain metadata, which grpc-js allows only there.
function credentials() {
  const { BROKER_CA_FILE: ca, BROKER_CERT_FILE: cert, BROKER_KEY_FILE: key } = process.env;
  if (!ca) {
    if (token) metadata.set('authorization', `Bearer ${token}`);
    return grpc.credentials.createInsecure();
  }
  const read = (file) => (file ? fs.readFileSync(file) : null);
  const tls = grpc.credentials.createSsl(read(ca), read(key), read(cert));
  if (!token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_, callback) => {
    const headers = new grpc.Metadata();
    headers.set('authorization', `Bearer ${token}`);
    callback(null, headers);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

const definition = protoLoader.loadSync(path.join(PROTOS, 'broker/v1/lease_service.proto'), {
  includeDirs: [PROTOS],
  enums: String, // LEASE_STATE_RELEASED rather than 2
  longs: String, // int64 fencing tokens, exactly
  defaults: true,
});
const { LeaseService } = grpc.loadPackageDefinition(definition).broker.v1;
const leases = new LeaseService(address, credentials());

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
