import { describe, expect, test } from 'vitest';
import { UCUM } from './systems.ts';
import { toUcum, unitFromCwe } from './units.ts';

describe('toUcum', () => {
  test.each([
    ['µmol/L', 'umol/L'], // micro sign U+00B5
    ['μmol/L', 'umol/L'], // Greek mu U+03BC
    ['mEq/L', 'meq/L'],
    ['mIU/L', 'm[IU]/L'],
    ['mg/dl', 'mg/dL'],
    ['MMOL/L', 'mmol/L'],
    ['mmol/L', 'mmol/L'],
    ['ng/L', 'ng/L'],
    ['pg/mL', 'pg/mL'],
    ['%', '%'],
    ['{INR}', '{INR}'],
    ['INR', '{INR}'],
    ['mL/min/{1.73_m2}', 'mL/min/{1.73_m2}'],
    ['10*9/L', '10*9/L'],
    ['x10^9/L', '10*9/L'],
    ['{Cells}/uL', '{Cells}/uL'],
    ['gm/dl', 'g/dL'],
    ['[IU]/mL', '[IU]/mL'],
  ])('%s → %s', (sent, ucum) => {
    expect(toUcum(sent)).toBe(ucum);
  });

  test.each(['', 'cells', 'METRIC', 'mg per dl', 'mmol/L/x', '{unclosed/L', 'Θετικό'])('%s is not vouched for', (sent) => {
    expect(toUcum(sent)).toBeUndefined();
  });
});

describe('unitFromCwe (OBX-6)', () => {
  test('printable unit is OBX-6.2 when valued, the UCUM code from OBX-6.1', () => {
    expect(unitFromCwe('umol/L', 'µmol/L', 'UCUM')).toEqual({ unit: 'µmol/L', code: 'umol/L', system: UCUM });
  });

  test('a bare OBX-6.1 spelling is normalised and kept as the printable unit', () => {
    expect(unitFromCwe('mEq/L', '', '')).toEqual({ unit: 'mEq/L', code: 'meq/L', system: UCUM });
  });

  test('a code in a non-UCUM system is not read as UCUM; the text may still be', () => {
    // '1' is valid UCUM (unity) but here it is a METRIC code whose text is 'ML'.
    expect(unitFromCwe('1', 'ML', 'METRIC')).toEqual({ unit: 'ML', code: 'mL', system: UCUM });
  });

  test('unknown units keep their text and get no system', () => {
    expect(unitFromCwe('U/gHb', '', '')).toEqual({ unit: 'U/gHb' });
    expect(unitFromCwe('', '', '')).toEqual({});
  });
});
