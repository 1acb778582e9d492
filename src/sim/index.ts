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
} from './cluster.js';
export { randomPlan, type RandomPlanOptions } from './plan.js';
