import { readdirSync, readFileSync } from 'node:fs';

/** Whether a process exists (signal 0: nothing is sent). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Live (not zombie) child processes of `pid`, from /proc. */
export function childPids(pid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (/^\d+$/.test(entry)) {
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if (Number(fields[1]) === pid && fields[0] !== 'Z') {
          pids.push(Number(entry));
        }
      } catch {
        // gone meanwhile
      }
    }
  }
  return pids;
}
