// The replication address as the machines carry it. Structurally identical
// to ReplicationAddress in src/ports/transport.ts (machines/ depends on
// nothing in src/); test/machines/address.test.ts keeps the two in step.

export type MachineAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

/** `host:port` or the socket path, for logs. */
export function formatAddress(address: MachineAddress): string {
  return address.kind === 'tcp' ? `${address.host}:${address.port}` : address.path;
}
