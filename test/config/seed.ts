// The two configuration examples of zc.zrs's README (seed/), verbatim, and
// the same with their port, host and path replaced by %define'd names.

/** zc.zrs README, "Configuration with ZConfig": the primary example, verbatim. */
export const SEED_PRIMARY = `%import zc.zrs

<zrs>
 replicate-to 5000

 <filestorage>
     path /path/to/data/file
 </filestorage>
</zrs>
`;

/** zc.zrs README: the secondary example, verbatim. */
export const SEED_SECONDARY = `%import zc.zrs

<zrs>
 replicate-from primary-host:5000
 replicate-to 5000
 keep-alive-delay 60

 <filestorage>
     path /path/to/secondary/data/file
 </filestorage>
</zrs>
`;

/** The seed examples with their literal port, host and path replaced by %define'd names. */
export function seedPrimary(defines: { PORT: string; DATA: string }): string {
  return `%define PORT ${defines.PORT}\n%define DATA ${defines.DATA}\n${SEED_PRIMARY.replace('5000', '$PORT').replace('/path/to/data/file', '$DATA')}`;
}

export function seedSecondary(defines: { PRIMARY: string; PORT: string; DATA: string }): string {
  const body = SEED_SECONDARY.replace('primary-host:5000', '$PRIMARY').replace('replicate-to 5000', 'replicate-to $PORT').replace('/path/to/secondary/data/file', '$DATA');
  return `%define PRIMARY ${defines.PRIMARY}\n%define PORT ${defines.PORT}\n%define DATA ${defines.DATA}\n${body}`;
}
