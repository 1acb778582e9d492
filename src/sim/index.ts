// The simulation harness's public surface: a virtual clock, a simulated
// network and a cluster of real Primary/Secondary actors running over them.

export { VirtualClock, DEFAULT_VIRTUAL_EPOCH_MS, type ClockView } from './clock.js';
export { SimNetwork, SimNetworkError, type SimNetworkOptions, type SimNetworkStats, type SimConnectionInfo, type HealMode, type CrashStyle } from './network.js';
export {
  SimCluster,
  InvariantViolationError,
  describeOp,
  type SimClusterOptions,
  type SimOp,
  type ScheduledOp,
  type SimPlan,
  type SimRunResult,
  type SimStats,
  type Violation,
  type InvariantName,
  type SimCommitRecord,
} from './cluster.js';
export { HistoryTree, LINEAGE_ORIGIN, lineageLink, shapeOf, type LineageEntry, type LineageFault, type TxnShape } from './lineage.js';
export { randomPlan, type RandomPlanOptions } from './plan.js';
export { SimDisk, SimDiskFullError, type DiskMode, type SimDiskView } from './disk.js';
export type { ReplicationMutations as SimMutations, MutationName } from '../replication/mutations.js';
