/**
 * Greek and Latin personal names: normalisation, ELOT 743 transliteration and comparison keys.
 *
 * Labs send Greek script, Latin, or both (repeating PID-5); the GHS registry holds Latin. Keys
 * built here let a Greek name agree with its passport (ELOT 743 / ISO 843 type 2) spelling and a
 * few common Cypriot spellings (Χ→H, ΜΠ→MB, Γ→Y before front vowels, ...).
 */
import type { HumanName } from '@medplum/fhirtypes';

const DIAERESIS = '\u0308';
/** Greek capital letters Α..Ω (U+0391..U+03A9). */
const GREEK_LETTER = /[\u0391-\u03A9]/;
/** Latin capitals that look exactly like Greek ones: a lab keyboard may mix them into a Greek word. */
const HOMOGLYPHS: Record<string, string> = {
  A: 'Α', B: 'Β', E: 'Ε', H: 'Η', I: 'Ι', K: 'Κ', M: 'Μ', N: 'Ν', O: 'Ο', P: 'Ρ', T: 'Τ', X: 'Χ', Y: 'Υ', Z: 'Ζ',
};
const VOWELS = new Set(['Α', 'Ε', 'Η', 'Ι', 'Ο', 'Υ', 'Ω']);
const VOICED = new Set(['Β', 'Γ', 'Δ', 'Ζ', 'Λ', 'Μ', 'Ν', 'Ρ']);
/** Letters after which Γ sounds like Y and is often written so (ΓΙΩΡΓΟΣ → YIORGOS). */
const FRONT_VOWELS = new Set(['Ε', 'Ι', 'Η', 'Υ']);
/** ELOT 743 single letters; the first spelling is the standard, the rest are common variants. */
const LETTERS: Record<string, string[]> = {
  Α: ['A'], Β: ['V'], Γ: ['G'], Δ: ['D'], Ε: ['E'], Ζ: ['Z'], Η: ['I'], Θ: ['TH'], Ι: ['I'], Κ: ['K'],
  Λ: ['L'], Μ: ['M'], Ν: ['N'], Ξ: ['X', 'KS'], Ο: ['O'], Π: ['P'], Ρ: ['R'], Σ: ['S'], Τ: ['T'],
  Υ: ['Y', 'I'], Φ: ['F', 'PH'], Χ: ['CH', 'H'], Ψ: ['PS'], Ω: ['O'],
};
/** Per word, at most this many spellings are generated (the standard one always first). */
const MAX_WORD_VARIANTS = 32;

/** NFKD, combining marks (tonos, dialytika) removed, uppercase, final sigma → Σ, spaces collapsed. */
export function normalizeName(s: string): string {
  return s
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .replace(/ς/g, 'σ')
    .toUpperCase()
    .replace(/\s+/g, ' ')
    .trim();
}

/** ELOT 743 / ISO 843 type 2 transcription (the Greek passport's); Latin text passes through. */
export function transliterateGreek(s: string): string {
  return transliterationOptions(s)
    .map((alternatives) => alternatives[0])
    .join('');
}

/**
 * Comparison keys `FAMILY|GIVEN` (letters only, first given name) for every spelling variant, so
 * that ΓΕΩΡΓΙΟΥ ΑΝΔΡΕΑΣ and GEORGIOU ANDREAS share one. No family name, no keys.
 */
export function nameKeys(name: HumanName): string[] {
  const family = name.family ?? '';
  const given = (name.given ?? []).find((g) => g.trim() !== '') ?? '';
  const families = spellings(family);
  if (families.length === 0) {
    return [];
  }
  const firstGiven = given.trim().split(/\s+/)[0] ?? '';
  const givens = firstGiven ? spellings(firstGiven) : [''];
  const keys = new Set<string>();
  for (const f of families) {
    for (const g of givens) {
      keys.add(`${f}|${g}`);
    }
  }
  return [...keys];
}

/** True when some name of `a` and some name of `b` share a key. */
export function namesAgree(a: HumanName[], b: HumanName[]): boolean {
  const keysA = new Set(a.flatMap(nameKeys));
  if (keysA.size === 0) {
    return false;
  }
  return b.some((name) => nameKeys(name).some((k) => keysA.has(k)));
}

/** Distinct letter-only spellings of a name part (spaces, hyphens, apostrophes dropped). */
function spellings(part: string): string[] {
  const options = transliterationOptions(part);
  let results = [''];
  for (const alternatives of options) {
    const next: string[] = [];
    for (const prefix of results) {
      for (const alt of alternatives) {
        next.push(prefix + alt);
      }
    }
    results = next.slice(0, 4 * MAX_WORD_VARIANTS);
  }
  const out = new Set<string>();
  for (const r of results) {
    const letters = r.replace(/[^\p{L}\p{N}]/gu, '');
    if (letters) {
      out.add(letters);
    }
  }
  return [...out];
}

interface Letter {
  ch: string;
  diaeresis: boolean;
}

/** Splits a string into uppercase letters, remembering dialytika (it breaks ΑΥ, ΟΥ digraphs). */
function letters(s: string): Letter[] {
  const out: Letter[] = [];
  for (const ch of s.normalize('NFKD')) {
    if (/\p{M}/u.test(ch)) {
      if (ch === DIAERESIS && out.length > 0) {
        out[out.length - 1].diaeresis = true;
      }
      continue;
    }
    for (const up of (ch === 'ς' ? 'σ' : ch).toUpperCase()) {
      out.push({ ch: up, diaeresis: false });
    }
  }
  return out;
}

/** The transliteration as a sequence of positions, each with its alternatives (standard first). */
function transliterationOptions(s: string): string[][] {
  const all = letters(s);
  const out: string[][] = [];
  let wordStart = 0;
  // Words are runs of letters; everything else is copied as is (whitespace collapsed).
  for (let i = 0; i <= all.length; i++) {
    const isLetter = i < all.length && /\p{L}/u.test(all[i].ch);
    if (isLetter) {
      continue;
    }
    if (i > wordStart) {
      out.push(...transliterateWord(all.slice(wordStart, i)));
    }
    if (i < all.length) {
      const c = /\s/.test(all[i].ch) ? ' ' : all[i].ch;
      if (!(c === ' ' && (out.length === 0 || out[out.length - 1][0] === ' '))) {
        out.push([c]);
      }
    }
    wordStart = i + 1;
  }
  while (out.length > 0 && out[out.length - 1][0] === ' ') {
    out.pop();
  }
  return out;
}

function transliterateWord(word: Letter[]): string[][] {
  if (!word.some((l) => GREEK_LETTER.test(l.ch))) {
    return word.map((l) => [l.ch]);
  }
  const w = word.map((l) => ({ ch: HOMOGLYPHS[l.ch] ?? l.ch, diaeresis: l.diaeresis }));
  const at = (k: number): string => w[k]?.ch ?? '';
  const out: string[][] = [];
  let i = 0;
  while (i < w.length) {
    const c = at(i);
    const n = at(i + 1);
    // A dialytika on the second letter means two separate vowels, not a digraph.
    const plainNext = w[i + 1] !== undefined && !w[i + 1].diaeresis;
    const initial = i === 0;
    const final = i + 2 === w.length;
    if ((c === 'Α' || c === 'Ε' || c === 'Η') && n === 'Υ' && plainNext) {
      const after = at(i + 2);
      const base = c === 'Η' ? 'I' : c === 'Α' ? 'A' : 'E';
      const voiced = VOWELS.has(after) || VOICED.has(after);
      out.push([base + (voiced ? 'V' : 'F'), base + 'U']);
      i += 2;
    } else if (c === 'Ο' && n === 'Υ' && plainNext) {
      out.push(['OU']);
      i += 2;
    } else if (c === 'Μ' && n === 'Π') {
      out.push(initial || final ? ['B', 'MP'] : ['MP', 'MB', 'B']);
      i += 2;
    } else if (c === 'Ν' && n === 'Τ') {
      out.push(initial || final ? ['D', 'NT'] : ['NT', 'ND', 'D']);
      i += 2;
    } else if (c === 'Γ' && n === 'Κ') {
      out.push(initial || final ? ['G', 'GK'] : ['NG', 'GK', 'G']);
      i += 2;
    } else if (c === 'Γ' && n === 'Γ') {
      out.push(['NG', 'GG']);
      i += 2;
    } else if (c === 'Γ' && n === 'Ξ') {
      out.push(['NX', 'NKS']);
      i += 2;
    } else if (c === 'Γ' && n === 'Χ') {
      out.push(['NCH', 'NH']);
      i += 2;
    } else if (c === 'Γ' && FRONT_VOWELS.has(n)) {
      out.push(['G', 'Y']);
      i += 1;
    } else {
      out.push(LETTERS[c] ?? [c]);
      i += 1;
    }
  }
  return capVariants(out);
}

/** Keeps the product of a word's alternatives under MAX_WORD_VARIANTS by dropping late variants. */
function capVariants(word: string[][]): string[][] {
  let product = word.reduce((p, alts) => p * alts.length, 1);
  for (let k = word.length - 1; k >= 0 && product > MAX_WORD_VARIANTS; k--) {
    if (word[k].length > 1) {
      product /= word[k].length;
      word[k] = [word[k][0]];
    }
  }
  return word;
}
