// Hardhat Network for shoal's ledger tests: automine, the default dev accounts.
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      hardfork: "shanghai",
    },
  },
};
