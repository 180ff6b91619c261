const o="/favicon.svg";export{o as _};
